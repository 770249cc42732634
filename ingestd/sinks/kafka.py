"""The Kafka sink: one JSON message per record, keyed by market, acks=all, idempotent producer.

Topics and messages
-------------------
Each record kind has a route (`ROUTES`): the config option naming its topic, the `event_type` its
messages carry, how a record becomes a message, its market (the message key) and its natural key:

    record           topic option (default)                      event_type        key
    Trade            trades_topic            (market_trades)     market_trade      venue:symbol
    BookTop          books_topic             (order_books)       order_book        venue:symbol
    PredictionTrade  prediction_trades_topic (market_trades)     prediction_trade  venue:asset_id
    PredictionBook   prediction_books_topic  (order_books)       prediction_book   venue:asset_id
    WhaleTrade       whales_topic            (whale_activity)    whale_trade       polymarket:trader_address
    Derivative       derivatives_topic       (derivatives)       derivative        venue:symbol
    DexMetric        dex_topic               (dex_metrics)       dex_metric        chain:pool_address
    OnchainFlow      flows_topic             (onchain_flows)     onchain_flow      chain:token
    Price            prices_topic            (prices)            price             source:coin_id

One market's messages share a partition (the key's murmur2 hash, as the Java client and the legacy
services' clients place it) and so stay in order. Values are compact JSON, `event_type` first:

    {"event_type":"market_trade","venue":"binance","symbol":"BTCUSDT","trade_id":3141592,
     "side":"buy","price":65000.1,"size":0.012,"amount":780.0012,
     "timestamp":"2024-11-01T12:34:56.123Z","timestamp_ms":1730464496123,
     "received_at":"2024-11-01T12:34:56.125Z"}

    {"event_type":"order_book","venue":"binance","symbol":"BTCUSDT","update_id":987654,
     "timestamp":"2024-11-01T12:34:56.123Z","timestamp_ms":1730464496123,
     "received_at":"2024-11-01T12:34:56.125Z","best_bid":65000.0,"best_bid_size":1.2,
     "best_ask":65000.1,"best_ask_size":0.4,"spread_bps":0.0154,
     "bids":[[65000.0,1.2],[64999.9,3.0]],"asks":[[65000.1,0.4],[65000.2,2.5]]}

    {"event_type":"whale_trade","trade_id":"0x123...","trader_address":"0x1f2d...d0cf",
     "market_id":"0xabc...","token_id":"1234","side":"BUY","size":1000.0,"price":0.54,"amount":540.0,
     "timestamp":"2024-11-01T12:34:56Z","detected_at":"2024-11-01T12:34:56.123Z"}

The whale event is the legacy service's, field for field and format for format (`timestamp` to the
second as the Data API gives it, with a fraction only if the time has one; `detected_at` to the
millisecond); `pseudonym`, `title` and `outcome` follow when known, and are left out when not, so
a whale without them gives exactly the legacy shape. The other new kinds carry the model's fields,
times as ISO 8601 UTC with microseconds (exact: `"2024-11-01T12:34:56.123456Z"`), `received_at`
for the receive time, absent values as null; uint256-sized values (DEX liquidity, transfer amounts)
stay the model's exact decimal strings:

    {"event_type":"derivative","venue":"bybit","symbol":"BTCUSDT","timestamp":"...","received_at":"...",
     "funding_rate":0.0001,"next_funding_time":"...","open_interest":51234.5,"open_interest_value":3.4e9,
     "mark_price":66000.5,"index_price":65990.0,"basis":10.5}
    {"event_type":"prediction_trade","venue":"polymarket","market_id":"0xabab...","asset_id":"7777...",
     "side":"buy","price":0.53,"size":120.0,"amount":63.6,"timestamp":"...","received_at":"...",
     "tx_hash":"0x...","fee_rate_bps":0.0}
    {"event_type":"prediction_book","venue":"polymarket","market_id":"0x...","asset_id":"7777...",
     "timestamp":"...","received_at":"...","hash":"...","best_bid":0.52,"best_ask":0.54,
     "bids":[[0.52,1000.0]],"asks":[[0.54,800.0]]}
    {"event_type":"dex_metric","chain":"ethereum","pool_address":"0x88e6...","timestamp":"...",
     "received_at":"...","liquidity":"1701411834604692317316873037158841","tvl_usd":3.1e8,
     "volume_24h_usd":1.2e8,"price":2501.25,"depth_2pct_usd":4.5e6}
    {"event_type":"onchain_flow","chain":"ethereum","token":"0xa0b8...","block_number":19000000,
     "block_hash":"0x...","tx_hash":"0x...","log_index":3,"timestamp":"...","received_at":"...",
     "from_addr":"0x11...","to_addr":"0x22...","amount":"1234.5","from_tag":"binance-hot","to_tag":null}
    {"event_type":"price","source":"coingecko","coin_id":"bitcoin","symbol":"BTC","timestamp":"...",
     "received_at":"...","price_usd":66000.0,"market_cap":1.3e12,"market_cap_rank":1,...}

`side` of trades is the taker side, lower case as everywhere in ingestd (the whale event keeps the
legacy "BUY"/"SELL"). Trade and book times are truncated to milliseconds, as before. The Kafka
message timestamp is the time ingestd sent it (CreateTime), never the exchange time: a broker with
`message.timestamp.*.max.ms` limits would otherwise reject a batch over one odd exchange clock.
Strings are written verbatim (JSON escapes quotes, control characters and nothing else; any Unicode
passes through). JSON has no NaN or infinity: msgspec writes such floats as `null`. A record that
cannot be a Kafka message is refused, logged with its reason, counted in
`sink.<name>.records_refused`, and the rest of its batch is written: a string that is not valid
Unicode (a lone surrogate), a time the C library cannot convert, key + value larger than
`max_record_bytes` (1,000,000 by default, under Kafka's default `message.max.bytes` of 1 MiB; Tansu
enforces no limit), or a record the broker rejects for good (MESSAGE_TOO_LARGE for a topic with a
lower limit, INVALID_RECORD from broker-side validation). A broker's verdict may cover a whole
request, so the records it failed are sent again one at a time: the one still rejected alone is
refused (and remembered, so a retry of its batch skips it), its neighbours are delivered.

Delivery
--------
The producer is librdkafka's (confluent-kafka): acks=all, enable.idempotence (so at most 5 requests
in flight per connection, retried in order without duplicates within the producer session),
compression (`compression`, gzip by default; snappy, lz4 and zstd are built into librdkafka).
`write(batch)` produces every record, then `flush()`es: it returns only when the broker acknowledged
all of them, else raises SinkError and the pipeline retries the same batch (then spools it). Nothing
is dropped silently. A write fails within about `delivery_timeout_s` (librdkafka's
`message.timeout.ms`, also the bound for connecting and metadata). After any failure the producer is
closed (what it still held is purged) and a fresh one (new producer id) is made at the next write:
an idempotent producer that lost its broker state cannot always recover (a restarted Tansu has none).

Checkpoints
-----------
`Checkpoint` records are not market data and never go to the market topics. Once every data record
of the batch is acknowledged, the highest checkpoint per market goes to the internal topic
`ingestd.checkpoints` (created at connect with `cleanup.policy=compact`, one partition, the broker's
replication factor; key `venue:symbol`, value `{"event_type":"checkpoint","venue":..,"symbol":..,
"trade_id":..,"updated_at":..}`). A checkpoint only moves forward. `open()` reads that topic back
(its last `checkpoint_tail` messages: all of it on a compacted topic of any realistic size), and
`resume_points(venue)` answers from it, so the Kafka sink can be a daemon's first sink.

Duplicates
----------
The idempotent producer only de-duplicates its own retries within one producer session. A retried
batch, a spool replay of a batch that was in fact delivered before a crash, or a resume that refetches
records already delivered would otherwise produce duplicates. So the sink remembers the natural keys
of the most recently *acknowledged* records per (kind, market) — trade_id, update_id; for the new
kinds their model's natural key: time (derivatives, DEX metrics, prices), block_hash + log_index,
time + book hash, tx_hash + time, trade_id + token_id (whales) — and drops a record whose key it
remembers (`sink.<name>.duplicates_skipped`; also within one batch):

* At connect (open, and again after any failed write) the window is rebuilt from the broker: the last
  `tail_per_partition` messages (default 20,000) of every partition of every data topic are read with
  a plain consumer (assign + seek; no consumer group is joined, no offset committed) and their keys
  taken from the JSON values. The broker is the truth: a failed write may have been stored anyway (a
  timeout after the broker appended it), and a broker may have lost data (a restarted Tansu loses
  everything).
* Each acknowledged record is added as it is confirmed.
* The window holds at most `dedup_window` keys (default 200,000, about 21 MB) across all markets;
  the oldest-confirmed are forgotten first.

Limits, stated plainly:

* A duplicate older than the window is not recognized and is sent again (at-least-once beyond the
  window). With integer ids the sink can tell when that may be happening: a record whose id is at or
  below the highest id forgotten for its market (or below the oldest id read back from a partition
  whose tail was cut) is sent and counted in `sink.<name>.beyond_window`, with a warning. At 30k
  records/s the default window covers about 7 s of full-rate traffic, and the read-back covers the
  last 20,000 messages of each partition: a crash replay (the batches in flight) and a resume (the
  trades after the last checkpoint, normally under a second old) fall well inside it. A spool
  replayed long after other traffic has passed does not.
* Only this process's writes and what it read back are known: two processes writing the same
  market at the same time (a make-before-break successor) can both send a record. Other producers'
  messages in the same topics are read back and ignored unless they look like ours.
* A request already on the wire when a failed producer is closed can in principle reach the broker
  after the read-back that follows: a narrow race, leading to a duplicate.
* A rebuild replaces the window with what the read-back finds, so after a failure the window is the
  read-back tail again, not the larger set remembered in memory before.
* Whale events carry `detected_at` to the millisecond only (the legacy format), so a consumer that
  rebuilds a WhaleTrade gets `detected_us` truncated to the millisecond; every other field of every
  kind comes back exactly.
* Consumers that need exactly-once anyway should de-duplicate on the natural key in the message.

The broker must be reachable at open (the read-back needs it), as the SQLite sink needs its file:
open raises SinkError otherwise. No TLS/SASL settings exist in the config yet.

Speed
-----
kafka-python, the first client here, is pure Python: ~31 µs of CPU per record (py-spy: 37 % in its
record accumulator, a future per record; 26 % in its sender thread), which capped the daemon near
30k records/s on two cores and put p99 at 36-170 ms at 10k/s. librdkafka does that work in C on its
own threads, outside the GIL: the Python left per record is building and encoding the JSON value
and one `produce()` call. Delivery reports are asked for failures only
(`delivery.report.only.error`): a flush that returns with nothing outstanding and no error report
means every record was acknowledged, so no Python callback runs per record. gzip is ~40 % of the
sink's CPU (zstd or lz4 take 8 instead of 13 µs a record with the decoding) but it runs on
librdkafka's threads, and the end-to-end rate did not move with the codec here, so gzip (which
every consumer reads) stays the default.

bench/kafka_sink.py against Tansu, 2 cores shared with other work (load average 2.7-3.7):

    sink alone, batch 1000, gzip            66k-84k trades/s, 11 µs CPU per trade (all threads)
    whole runner, producer decoding         68k-99k trades/s flat out (kafka-python: 27-30k)
    10k trades/s offered, linger 5 ms       exchange -> acknowledged p99 14-21 ms, write p99 12 ms
    10k trades/s offered, linger 10 ms      p99 18-28 ms (kafka-python: 88-143 ms, linger 50)
    open, 220,000 messages on the topics    0.8-1.1 s to read the window back

bench/vs_cryptofeed.py (simulator blast over wss:// -> daemon -> Tansu): 31k-49k trades/s durable,
depending on the load the other processes put on the machine; there the daemon's receive and decode,
not this sink, is the limit.

Tansu 0.6 (the test broker) returns the base offset of a partition's last record batch plus one as
its "latest" offset instead of the log end; the read-back therefore reads until librdkafka reports
the end of each partition (`enable.partition.eof`, from the high watermark of fetch responses), never
trusting the offset query alone.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ClassVar, Hashable, Sequence, Union

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ingestd.model import (
    BookTop,
    Checkpoint,
    Derivative,
    DexMetric,
    OnchainFlow,
    PredictionBook,
    PredictionTrade,
    Price,
    Record,
    Trade,
    WhaleTrade,
)
from ingestd.sinks.base import Sink, SinkError
from ingestd.stats import StatsRegistry, now_us

logger = logging.getLogger("ingestd.sinks.kafka")

# librdkafka logs every refused connection during an outage (several lines a second). The sink reports
# each failure once, as the SinkError the pipeline logs (rate limited) with librdkafka's reason in it.
# So, unless someone configured this logger already, only its CRITICAL lines pass; set its level (e.g.
# to DEBUG) to see them all again.
client_logger = logging.getLogger("ingestd.sinks.kafka.librdkafka")
if client_logger.level == logging.NOTSET:
    client_logger.setLevel(logging.CRITICAL)

CHECKPOINTS_TOPIC = "ingestd.checkpoints"
DEFAULT_DEDUP_WINDOW = 200_000
DEFAULT_TAIL_PER_PARTITION = 20_000
DEFAULT_CHECKPOINT_TAIL = 100_000
DEFAULT_MAX_RECORD_BYTES = 1_000_000

# Producer tuning (bench/kafka_sink.py against Tansu): write() flushes, and librdkafka sends at once on
# a flush whatever linger says, so linger only shapes requests while a large batch is being produced.
_LINGER_MS = 5
_BATCH_BYTES = 1_000_000
_QUEUE_MESSAGES = 1_000_000  # records librdkafka may hold unacknowledged: more than any batch
_STATS_INTERVAL_MS = 50  # how often librdkafka reports statistics (only read until the producer id comes)
# Refused records: the first few of a batch are logged one by one, the rest as a count.
_REFUSALS_LOGGED_PER_BATCH = 3
_WARNING_INTERVAL_S = 10.0
# Broker verdicts about records that no retry can change (a whole request may get them; see
# `_isolate`). MSG_SIZE_TOO_LARGE also comes from produce() itself, for a record over message.max.bytes.
_PERMANENT_RECORD_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG, KafkaError.INVALID_TIMESTAMP,
})
# Natural keys of records the broker rejected for good, so a retried batch skips them client-side.
_REJECTED_REMEMBERED = 10_000


# --- times -------------------------------------------------------------------------------------


_SECONDS: dict[int, str] = {}


def _second_prefix(second: int) -> str:
    prefix = _SECONDS.get(second)
    if prefix is None:
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        prefix = _SECONDS[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return prefix


_last_ms: tuple[int, str] = (-1, "")  # one (ms, text) pair: trades of a batch share milliseconds


def iso_ms(us: int) -> str:
    """Microseconds since the epoch -> '2024-11-01T12:34:56.123Z' (truncated to the millisecond)."""
    global _last_ms
    ms = us // 1000
    last = _last_ms  # read once: another thread may replace the pair, never tear it
    if last[0] == ms:
        return last[1]
    second, rem = divmod(ms, 1000)
    text = f"{_second_prefix(second)}.{rem:03d}Z"
    _last_ms = (ms, text)
    return text


def iso_us(us: int) -> str:
    """Microseconds since the epoch -> '2024-11-01T12:34:56.123456Z' (exact)."""
    second, rem = divmod(us, 1_000_000)
    return f"{_second_prefix(second)}.{rem:06d}Z"


def iso_s(us: int) -> str:
    """'2024-11-01T12:34:56Z' for a whole second (the legacy whale events' format), else exact."""
    second, rem = divmod(us, 1_000_000)
    return f"{_second_prefix(second)}Z" if rem == 0 else f"{_second_prefix(second)}.{rem:06d}Z"


def _opt_iso_us(us: int | None) -> str | None:
    return None if us is None else iso_us(us)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def _us_of(dt: datetime) -> int:
    return (dt - _EPOCH) // _ONE_US


# --- message shapes ----------------------------------------------------------------------------


class TradeEvent(msgspec.Struct, tag_field="event_type", tag="market_trade"):
    venue: str
    symbol: str
    trade_id: int
    side: str
    price: float
    size: float
    amount: float  # price * size, as the legacy whale events carry it
    timestamp: str  # exchange time, ISO 8601 UTC with milliseconds
    timestamp_ms: int
    received_at: str


class BookEvent(msgspec.Struct, tag_field="event_type", tag="order_book"):
    venue: str
    symbol: str
    update_id: int
    timestamp: str
    timestamp_ms: int
    received_at: str
    best_bid: float
    best_bid_size: float
    best_ask: float
    best_ask_size: float
    spread_bps: float
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


class WhaleTradeEvent(msgspec.Struct, tag_field="event_type", tag="whale_trade", omit_defaults=True):
    """The legacy service's event (polymarket-whale-ingestion-readme.md), then what else is known."""

    trade_id: str
    trader_address: str
    market_id: str
    token_id: str
    side: str
    size: float
    price: float
    amount: float
    timestamp: str  # to the second, as the legacy service wrote it
    detected_at: str  # to the millisecond
    pseudonym: str | None = None
    title: str | None = None
    outcome: str | None = None


class PredictionTradeEvent(msgspec.Struct, tag_field="event_type", tag="prediction_trade"):
    venue: str
    market_id: str
    asset_id: str
    side: str
    price: float
    size: float
    amount: float
    timestamp: str
    received_at: str
    tx_hash: str
    fee_rate_bps: float | None


class PredictionBookEvent(msgspec.Struct, tag_field="event_type", tag="prediction_book"):
    venue: str
    market_id: str
    asset_id: str
    timestamp: str
    received_at: str
    hash: str
    best_bid: float | None
    best_ask: float | None
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


class DerivativeEvent(msgspec.Struct, tag_field="event_type", tag="derivative"):
    venue: str
    symbol: str
    timestamp: str
    received_at: str
    funding_rate: float | None
    next_funding_time: str | None
    open_interest: float | None
    open_interest_value: float | None
    mark_price: float | None
    index_price: float | None
    basis: float | None


class DexMetricEvent(msgspec.Struct, tag_field="event_type", tag="dex_metric"):
    chain: str
    pool_address: str
    timestamp: str
    received_at: str
    liquidity: str
    tvl_usd: float | None
    volume_24h_usd: float | None
    price: float | None
    depth_2pct_usd: float | None


class OnchainFlowEvent(msgspec.Struct, tag_field="event_type", tag="onchain_flow"):
    chain: str
    token: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    timestamp: str
    received_at: str
    from_addr: str
    to_addr: str
    amount: str
    from_tag: str | None
    to_tag: str | None


class PriceEvent(msgspec.Struct, tag_field="event_type", tag="price"):
    source: str
    coin_id: str
    symbol: str
    timestamp: str
    received_at: str
    price_usd: float | None
    market_cap: float | None
    market_cap_rank: int | None
    total_volume: float | None
    high_24h: float | None
    low_24h: float | None
    price_change_24h: float | None
    price_change_pct_24h: float | None
    circulating_supply: float | None


class CheckpointEvent(msgspec.Struct, tag_field="event_type", tag="checkpoint"):
    venue: str
    symbol: str
    trade_id: int  # every trade of the market with id <= trade_id is stored
    updated_at: str


def trade_event(t: Trade) -> TradeEvent:
    return TradeEvent(
        t.venue, t.symbol, t.trade_id, t.side, t.price, t.qty, t.price * t.qty,
        iso_ms(t.ts_us), t.ts_us // 1000, iso_ms(t.recv_us),
    )


def book_event(b: BookTop) -> BookEvent:
    return BookEvent(
        b.venue, b.symbol, b.update_id, iso_ms(b.ts_us), b.ts_us // 1000, iso_ms(b.recv_us),
        b.bid_px, b.bid_sz, b.ask_px, b.ask_sz, b.spread_bps, b.bids, b.asks,
    )


def whale_event(w: WhaleTrade) -> WhaleTradeEvent:
    return WhaleTradeEvent(
        w.trade_id, w.trader_address, w.market_id, w.token_id, w.side, w.size, w.price, w.amount,
        iso_s(w.ts_us), iso_ms(w.detected_us), w.pseudonym, w.title, w.outcome,
    )


def prediction_trade_event(t: PredictionTrade) -> PredictionTradeEvent:
    return PredictionTradeEvent(
        t.venue, t.market, t.asset_id, t.side, t.price, t.size, t.price * t.size, iso_us(t.ts_us),
        iso_us(t.recv_us), t.tx_hash, t.fee_rate_bps,
    )


def prediction_book_event(b: PredictionBook) -> PredictionBookEvent:
    return PredictionBookEvent(
        b.venue, b.market, b.asset_id, iso_us(b.ts_us), iso_us(b.recv_us), b.book_hash, b.best_bid, b.best_ask,
        b.bids, b.asks,
    )


def derivative_event(d: Derivative) -> DerivativeEvent:
    return DerivativeEvent(
        d.venue, d.symbol, iso_us(d.ts_us), iso_us(d.recv_us), d.funding_rate, _opt_iso_us(d.next_funding_us),
        d.open_interest, d.open_interest_value, d.mark_price, d.index_price, d.basis,
    )


def dex_metric_event(m: DexMetric) -> DexMetricEvent:
    return DexMetricEvent(
        m.chain, m.pool_address, iso_us(m.ts_us), iso_us(m.recv_us), m.liquidity, m.tvl_usd, m.volume_24h_usd,
        m.price, m.depth_2pct_usd,
    )


def onchain_flow_event(f: OnchainFlow) -> OnchainFlowEvent:
    return OnchainFlowEvent(
        f.chain, f.token, f.block_number, f.block_hash, f.tx_hash, f.log_index, iso_us(f.ts_us), iso_us(f.recv_us),
        f.from_addr, f.to_addr, f.amount, f.from_tag, f.to_tag,
    )


def price_event(p: Price) -> PriceEvent:
    return PriceEvent(
        p.source, p.coin_id, p.symbol, iso_us(p.ts_us), iso_us(p.recv_us), p.price_usd, p.market_cap,
        p.market_cap_rank, p.total_volume, p.high_24h, p.low_24h, p.price_change_24h, p.price_change_pct_24h,
        p.circulating_supply,
    )


# --- reading our own messages back: each event's market and natural key ---------------------------


class _TradeProbe(msgspec.Struct, tag_field="event_type", tag="market_trade"):
    KIND: ClassVar[str] = Trade.KIND
    venue: str
    symbol: str
    trade_id: int

    def market(self) -> tuple[str, str]:
        return self.venue, self.symbol

    def natural_id(self) -> Hashable:
        return self.trade_id


class _BookProbe(msgspec.Struct, tag_field="event_type", tag="order_book"):
    KIND: ClassVar[str] = BookTop.KIND
    venue: str
    symbol: str
    update_id: int

    def market(self) -> tuple[str, str]:
        return self.venue, self.symbol

    def natural_id(self) -> Hashable:
        return self.update_id


class _WhaleProbe(msgspec.Struct, tag_field="event_type", tag="whale_trade"):
    KIND: ClassVar[str] = WhaleTrade.KIND
    trade_id: str
    trader_address: str
    token_id: str

    def market(self) -> tuple[str, str]:
        return "polymarket", self.trader_address

    def natural_id(self) -> Hashable:
        return self.trade_id, self.token_id


class _PredictionTradeProbe(msgspec.Struct, tag_field="event_type", tag="prediction_trade"):
    KIND: ClassVar[str] = PredictionTrade.KIND
    venue: str
    asset_id: str
    tx_hash: str
    timestamp: datetime

    def market(self) -> tuple[str, str]:
        return self.venue, self.asset_id

    def natural_id(self) -> Hashable:
        return self.tx_hash, _us_of(self.timestamp)


class _PredictionBookProbe(msgspec.Struct, tag_field="event_type", tag="prediction_book"):
    KIND: ClassVar[str] = PredictionBook.KIND
    venue: str
    asset_id: str
    hash: str
    timestamp: datetime

    def market(self) -> tuple[str, str]:
        return self.venue, self.asset_id

    def natural_id(self) -> Hashable:
        return _us_of(self.timestamp), self.hash


class _DerivativeProbe(msgspec.Struct, tag_field="event_type", tag="derivative"):
    KIND: ClassVar[str] = Derivative.KIND
    venue: str
    symbol: str
    timestamp: datetime

    def market(self) -> tuple[str, str]:
        return self.venue, self.symbol

    def natural_id(self) -> Hashable:
        return _us_of(self.timestamp)


class _DexMetricProbe(msgspec.Struct, tag_field="event_type", tag="dex_metric"):
    KIND: ClassVar[str] = DexMetric.KIND
    chain: str
    pool_address: str
    timestamp: datetime

    def market(self) -> tuple[str, str]:
        return self.chain, self.pool_address

    def natural_id(self) -> Hashable:
        return _us_of(self.timestamp)


class _OnchainFlowProbe(msgspec.Struct, tag_field="event_type", tag="onchain_flow"):
    KIND: ClassVar[str] = OnchainFlow.KIND
    chain: str
    token: str
    block_hash: str
    log_index: int

    def market(self) -> tuple[str, str]:
        return self.chain, self.token

    def natural_id(self) -> Hashable:
        return self.block_hash, self.log_index


class _PriceProbe(msgspec.Struct, tag_field="event_type", tag="price"):
    KIND: ClassVar[str] = Price.KIND
    source: str
    coin_id: str
    timestamp: datetime

    def market(self) -> tuple[str, str]:
        return self.source, self.coin_id

    def natural_id(self) -> Hashable:
        return _us_of(self.timestamp)


class _CheckpointProbe(msgspec.Struct, tag_field="event_type", tag="checkpoint"):
    KIND: ClassVar[str] = Checkpoint.KIND
    venue: str
    symbol: str
    trade_id: int


_PROBES = (_TradeProbe, _BookProbe, _WhaleProbe, _PredictionTradeProbe, _PredictionBookProbe, _DerivativeProbe,
           _DexMetricProbe, _OnchainFlowProbe, _PriceProbe, _CheckpointProbe)
_decode_probe = msgspec.json.Decoder(Union[_PROBES]).decode  # type: ignore[valid-type]
_encode = msgspec.json.Encoder().encode


# --- routes: record kind -> topic and message ----------------------------------------------------


@dataclass(frozen=True)
class Route:
    kind: str  # Record.KIND
    topic_option: str  # KafkaSinkConfig attribute naming the topic
    event_type: str  # "event_type" of its messages (how the read-back recognizes them)
    to_event: Callable[[Any], msgspec.Struct]
    market: Callable[[Any], tuple[str, str]]  # the message key's two parts, "a:b"
    natural_id: Callable[[Any], Hashable]  # unique within (kind, market)


ROUTES: dict[str, Route] = {}


def register_route(route: Route) -> None:
    """Route another record kind. The read-back recognizes its messages only with a probe in _PROBES."""
    ROUTES[route.kind] = route


def _venue_symbol(r: Any) -> tuple[str, str]:
    return r.venue, r.symbol


def _venue_asset(r: Any) -> tuple[str, str]:
    return r.venue, r.asset_id


for _route in (
    Route(Trade.KIND, "trades_topic", "market_trade", trade_event, _venue_symbol, lambda r: r.trade_id),
    Route(BookTop.KIND, "books_topic", "order_book", book_event, _venue_symbol, lambda r: r.update_id),
    Route(WhaleTrade.KIND, "whales_topic", "whale_trade", whale_event, lambda r: ("polymarket", r.trader_address),
          lambda r: (r.trade_id, r.token_id)),
    Route(PredictionTrade.KIND, "prediction_trades_topic", "prediction_trade", prediction_trade_event, _venue_asset,
          lambda r: (r.tx_hash, r.ts_us)),
    Route(PredictionBook.KIND, "prediction_books_topic", "prediction_book", prediction_book_event, _venue_asset,
          lambda r: (r.ts_us, r.book_hash)),
    Route(Derivative.KIND, "derivatives_topic", "derivative", derivative_event, _venue_symbol, lambda r: r.ts_us),
    Route(DexMetric.KIND, "dex_topic", "dex_metric", dex_metric_event, lambda r: (r.chain, r.pool_address),
          lambda r: r.ts_us),
    Route(OnchainFlow.KIND, "flows_topic", "onchain_flow", onchain_flow_event, lambda r: (r.chain, r.token),
          lambda r: (r.block_hash, r.log_index)),
    Route(Price.KIND, "prices_topic", "price", price_event, lambda r: (r.source, r.coin_id), lambda r: r.ts_us),
):
    register_route(_route)


def market_key(a: str, b: str) -> bytes:
    """The message key of a market: UTF-8 "venue:symbol" (or chain:pool, source:coin_id, ...)."""
    return f"{a}:{b}".encode()


# --- the window of delivered natural keys ----------------------------------------------------------


class _Market:
    __slots__ = ("ids", "floor", "key", "index")

    def __init__(self, key: bytes | None, index: int) -> None:
        # A dict, not a set: CPython's collector stops tracking a dict that holds only atoms (ints,
        # strings), while it walks every element of a set on each full collection.
        self.ids: dict[Hashable, None] = {}
        self.floor: int | None = None  # ids <= floor may have been delivered and forgotten
        self.key = key  # message key, None when the market's names are not valid UTF-8
        self.index = index  # position in DeliveredWindow._by_index

    def raise_floor(self, value: int) -> None:
        if self.floor is None or value > self.floor:
            self.floor = value


_INT64 = range(-(1 << 63), 1 << 63)


class DeliveredWindow:
    """Natural keys of the last `capacity` records known to be on the broker, per (kind, market).

    Arrival order, for forgetting the oldest, is a ring of two `array`s (market number, id): arrays
    hold no Python objects, so a full garbage collection does not walk 200,000 entries each time (with
    a deque and sets it added ~18 ms to every full collection, a pause the whole daemon feels). Ids that
    are not 64-bit integers (string or tuple keys of other kinds) sit in a side dict keyed by ring slot.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the de-duplication window must hold at least one key")
        self.capacity = capacity
        self._markets: dict[tuple[str, str, str], _Market] = {}
        self._by_index: list[_Market] = []
        self._ring_market = array("q", bytes(8 * capacity))
        self._ring_id = array("q", bytes(8 * capacity))
        self._ring_other: dict[int, Hashable] = {}  # slot -> id that is not a 64-bit int
        self._next = 0  # slot the next key goes to; once full, it holds the oldest key
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def market(self, kind: str, venue: str, symbol: str) -> _Market:
        ident = (kind, venue, symbol)
        m = self._markets.get(ident)
        if m is None:
            try:
                key = market_key(venue, symbol)
            except UnicodeEncodeError:
                key = None
            m = self._markets[ident] = _Market(key, len(self._by_index))
            self._by_index.append(m)
        return m

    def add(self, market: _Market, natural_id: Hashable) -> None:
        ids = market.ids
        if natural_id in ids:
            return
        ids[natural_id] = None
        slot = self._next
        if self._count == self.capacity:  # forget the oldest, which sits in this slot
            old_market = self._by_index[self._ring_market[slot]]
            old_id = self._ring_other.pop(slot, None)
            if old_id is None:
                old_id = self._ring_id[slot]
                old_market.raise_floor(old_id)
            old_market.ids.pop(old_id, None)
        else:
            self._count += 1
        self._ring_market[slot] = market.index
        if type(natural_id) is int and natural_id in _INT64:
            self._ring_id[slot] = natural_id
        else:
            self._ring_other[slot] = natural_id
        self._next = slot + 1 if slot + 1 < self.capacity else 0

    def contains(self, kind: str, venue: str, symbol: str, natural_id: Hashable) -> bool:
        m = self._markets.get((kind, venue, symbol))
        return m is not None and natural_id in m.ids


class _DeliveryErrors:
    """librdkafka's delivery report callback (failures only, see the module docstring): collects
    (error, topic, key, value) while flush() or poll() runs in the writing thread."""

    def __init__(self) -> None:
        self.reports: list[tuple[KafkaError, str, bytes | None, bytes | None]] = []

    def __call__(self, error: KafkaError | None, message: Any) -> None:
        if error is not None:
            self.reports.append((error, message.topic(), message.key(), message.value()))

    def take(self) -> list[tuple[KafkaError, str, bytes | None, bytes | None]]:
        reports, self.reports = self.reports, []
        return reports


class _ProducerIdWatch:
    """librdkafka's statistics callback, used for one thing: whether the idempotent producer has its
    producer id yet (the "eos" part of the statistics JSON). Until it has, nothing is sent, and its
    first attempt often waits out a 500 ms timer; connecting waits for it, so a write does not."""

    def __init__(self) -> None:
        self.assigned = False

    def __call__(self, stats_json: str) -> None:
        if not self.assigned:
            at = stats_json.find('"idemp_state"')
            self.assigned = at >= 0 and '"Assigned"' in stats_json[at : at + 32]


class _LastClientError:
    """librdkafka's error callback: client-wide trouble (all brokers down, ...), kept for messages."""

    def __init__(self) -> None:
        self.error: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        self.error = error
        client_logger.debug("client error: %s", error)


# --- the sink ------------------------------------------------------------------------------------


class KafkaSink(Sink):
    """Writes every record kind to its Kafka topic, checkpoints to an internal compacted topic."""

    def __init__(
        self,
        name: str,
        cfg: Any,
        *,
        stats: StatsRegistry | None = None,
        checkpoints_topic: str = CHECKPOINTS_TOPIC,
        dedup_window: int = DEFAULT_DEDUP_WINDOW,
        tail_per_partition: int = DEFAULT_TAIL_PER_PARTITION,
        checkpoint_tail: int = DEFAULT_CHECKPOINT_TAIL,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.bootstrap_servers = list(cfg.bootstrap_servers)
        self.compression = cfg.compression
        self.client_id = cfg.client_id
        self.delivery_timeout_s = float(cfg.delivery_timeout_s)
        self.checkpoints_topic = checkpoints_topic
        self.tail_per_partition = tail_per_partition
        self.checkpoint_tail = checkpoint_tail
        self.max_record_bytes = max_record_bytes
        self._topics = {kind: getattr(cfg, route.topic_option) for kind, route in ROUTES.items()}
        self._stats = stats
        self._rows_written = f"sink.{name}.rows_written"
        self._duplicates_skipped = f"sink.{name}.duplicates_skipped"
        self._batches = f"sink.{name}.batches"
        self._records_refused = f"sink.{name}.records_refused"
        self._beyond_window = f"sink.{name}.beyond_window"
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._produce: Callable = None  # type: ignore[assignment]  # producer.produce (tests may wrap it)
        self._delivery_errors = _DeliveryErrors()
        self._client_error = _LastClientError()
        self._pid_watch = _ProducerIdWatch()
        self._stale = True  # the producer and window must be (re)made before the next write
        self._opened = False
        self._window = DeliveredWindow(dedup_window)
        self._checkpoints: dict[tuple[str, str], int] = {}  # stored on the broker, highest per market
        self._next_beyond_warning = float("-inf")
        self._rejected: dict[tuple, None] = {}  # (kind, a, b, id), oldest first, bounded

    def topic_for(self, kind: str) -> str:
        return self._topics[kind]

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._stale:
                self._connect()
            self._opened = True
        logger.info(
            "sink %s: connected to %s (compression=%s); remembering %d delivered records, %d checkpoints",
            self.name, ",".join(self.bootstrap_servers), self.compression,
            len(self._window), len(self._checkpoints),
        )

    def close(self) -> None:
        with self._lock:
            self._opened = False
            self._stale = True
            producer, self._producer = self._producer, None
        if producer is not None:
            # write() returns only once its records are acknowledged, so nothing of a written batch is
            # left; whatever is (a write that failed or never returned) belongs to a batch the pipeline
            # holds or spooled, so it is purged rather than waited for (a shutdown has a deadline).
            try:
                producer.purge()
                producer.flush(0)
            except Exception as exc:  # must not raise
                logger.warning("sink %s: error while closing the producer: %s", self.name, exc)

    # --- writing -------------------------------------------------------------------------------

    def write(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        with self._lock:
            if not self._opened:
                raise SinkError(f"{self.name}: sink is not open")
            if self._stale:
                self._connect()
            self._write(batch)

    def _write(self, batch: Sequence[Record]) -> None:
        producer = self._producer
        produce = self._produce
        deadline = time.monotonic() + self.delivery_timeout_s
        window = self._window
        market_of = window.market
        timestamp_ms = int(time.time() * 1000)  # the broker's CreateTime: when ingestd sent it
        pending: list[tuple[_Market, Hashable, Any, str, bytes]] = []  # market, id, record, topic, value
        in_flight: set[tuple[int, Hashable]] = set()  # (id(market), natural id) sent by this call
        checkpoints: dict[tuple[str, str], int] = {}
        topics = self._topics
        routes = ROUTES
        duplicates = beyond = 0
        refusals: list[str] = []
        max_bytes = self.max_record_bytes
        self._delivery_errors.take()

        for record in batch:
            kind = getattr(record, "KIND", None)
            if kind == "checkpoint":
                key = (record.venue, record.symbol)
                if record.trade_id > checkpoints.get(key, record.trade_id - 1):
                    checkpoints[key] = record.trade_id
                continue
            route = routes.get(kind)  # type: ignore[arg-type]
            if route is None:
                # A programming error, not a store failure: no retry can fix it, so not a SinkError.
                raise TypeError(f"KafkaSink cannot store {record!r}")
            a, b = route.market(record)
            market = market_of(kind, a, b)
            natural_id = route.natural_id(record)
            if natural_id in market.ids or (id(market), natural_id) in in_flight:
                duplicates += 1
                continue
            if self._rejected and (kind, a, b, natural_id) in self._rejected:
                refusals.append(_describe(record, "the broker rejected it for good before"))
                continue
            if market.key is None:
                refusals.append(_describe(record, "its market's name is not valid Unicode"))
                continue
            try:
                value = _encode(route.to_event(record))
            except (UnicodeEncodeError, ValueError, TypeError, OverflowError, OSError) as exc:
                refusals.append(_describe(record, f"cannot be encoded as JSON: {exc}"))
                continue
            size = len(market.key) + len(value)
            if size > max_bytes:
                refusals.append(_describe(record, f"message of {size:,} bytes exceeds max_record_bytes {max_bytes:,}"))
                continue
            if market.floor is not None and type(natural_id) is int and natural_id <= market.floor:
                beyond += 1
            topic = topics[kind]
            refusal = self._produce_or_refuse(produce, topic, value, market.key, timestamp_ms, deadline)
            if refusal is not None:
                refusals.append(_describe(record, refusal))
                continue
            pending.append((market, natural_id, record, topic, value))
            in_flight.add((id(market), natural_id))

        acked, failures, first_error = self._settle(producer, pending, deadline, refusals)
        stats = self._stats
        if stats is not None:
            stats.incr(self._rows_written, acked)
            stats.incr(self._duplicates_skipped, duplicates)
            if refusals:
                stats.incr(self._records_refused, len(refusals))
            if beyond:
                stats.incr(self._beyond_window, beyond)
        if refusals:
            self._log_refusals(refusals)
        if beyond:
            self._warn_beyond_window(beyond)
        if failures:
            self._discard_producer()
            raise SinkError(
                f"{self.name}: {failures} of {len(pending)} records not acknowledged "
                f"({acked} were; a retry sends only what the broker does not have): {first_error}"
            )
        if checkpoints:
            self._store_checkpoints(producer, checkpoints, deadline)
        if stats is not None:
            stats.incr(self._batches)

    def _produce_or_refuse(self, produce, topic: str, value: bytes, key: bytes, timestamp_ms: int,
                           deadline: float) -> str | None:
        """Hand one message to librdkafka, waiting while its queue is full. Returns why the client
        refuses the record for good, or None once it is queued; anything else is a SinkError, so no
        client exception ever leaves write()."""
        while True:
            try:
                produce(topic, value, key, timestamp=timestamp_ms)
                return None
            except BufferError:  # librdkafka's queue is full: let it drain, then once more
                if time.monotonic() > deadline:
                    self._discard_producer()
                    raise SinkError(f"{self.name}: the producer's queue stayed full for delivery_timeout_s") from None
                self._producer.poll(0.05)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() in _PERMANENT_RECORD_ERRORS:
                    return f"refused by the client: {error.str()}"
                self._discard_producer()
                raise SinkError(f"{self.name}: producing to {topic} failed: {exc}") from exc

    def _settle(self, producer, pending, deadline, refusals: list[str]) -> tuple[int, int, Any]:
        """Flush, then sort the records into acknowledged (remembered in the window), rejected for
        good by the broker (refused, remembered so a retry skips them) or failed. Returns
        (acknowledged, failed, first failure)."""
        if not pending:
            return 0, 0, None
        left = producer.flush(max(0.05, deadline - time.monotonic()))
        reports = self._delivery_errors.take()
        if left:
            # Which ones are still out is not known; the next connect reads back what the broker has.
            reason = f"{left} not acknowledged within delivery_timeout_s={self.delivery_timeout_s}"
            if self._client_error.error is not None:
                reason += f" (last client error: {self._client_error.error.str()})"
            return 0, len(pending), reason
        add = self._window.add
        if not reports:
            for market, natural_id, _, _, _ in pending:
                add(market, natural_id)
            return len(pending), 0, None
        index = {(topic, value): i for i, (_, _, _, topic, value) in enumerate(pending)}
        failed: dict[int, KafkaError] = {}
        for error, topic, _, value in reports:
            i = index.get((topic, value))
            if i is not None:
                failed[i] = error
        permanent = [i for i, error in failed.items() if error.code() in _PERMANENT_RECORD_ERRORS]
        transient = [i for i, error in failed.items() if error.code() not in _PERMANENT_RECORD_ERRORS]
        acked = 0
        for i, (market, natural_id, _, _, _) in enumerate(pending):
            if i not in failed:
                add(market, natural_id)
                acked += 1
        if transient:
            return acked, len(transient) + len(permanent), failed[transient[0]].str()
        delivered, still_failed, error = self._isolate([pending[i] for i in permanent], deadline, refusals)
        return acked + delivered, still_failed, error

    def _isolate(self, suspects: list, deadline: float, refusals: list[str]) -> tuple[int, int, Any]:
        """Send each record a broker verdict failed again alone: one still rejected alone is refused
        (and remembered), the others were neighbours in a rejected request and are now delivered."""
        delivered = 0
        for market, natural_id, record, topic, value in suspects:
            producer = self._producer
            refusal = self._produce_or_refuse(self._produce, topic, value, market.key, int(time.time() * 1000),
                                              deadline)
            if refusal is not None:
                refusals.append(_describe(record, refusal))
                self._remember_rejected((record.KIND, *ROUTES[record.KIND].market(record), natural_id))
                continue
            left = producer.flush(max(0.05, deadline - time.monotonic()))
            reports = self._delivery_errors.take()
            if left:
                return delivered, len(suspects) - delivered, f"not acknowledged within delivery_timeout_s"
            if not reports:
                self._window.add(market, natural_id)
                delivered += 1
                continue
            error = reports[0][0]
            if error.code() not in _PERMANENT_RECORD_ERRORS:
                return delivered, len(suspects) - delivered, error.str()
            refusals.append(_describe(record, f"rejected by the broker: {error.str()}"))
            self._remember_rejected((record.KIND, *ROUTES[record.KIND].market(record), natural_id))
        return delivered, 0, None

    def _store_checkpoints(self, producer, checkpoints: dict[tuple[str, str], int], deadline: float) -> None:
        stored = self._checkpoints
        fresh = {k: v for k, v in checkpoints.items() if v > stored.get(k, v - 1)}
        if not fresh:
            return
        updated = iso_ms(now_us())
        sent = []
        for (venue, symbol), trade_id in fresh.items():
            try:
                key = market_key(venue, symbol)
                value = _encode(CheckpointEvent(venue, symbol, trade_id, updated))
            except (UnicodeEncodeError, ValueError, TypeError, OverflowError) as exc:
                logger.warning("sink %s: checkpoint %r dropped: %s", self.name, (venue, symbol, trade_id), exc)
                continue
            try:
                self._produce(self.checkpoints_topic, value, key)
            except (BufferError, KafkaException) as exc:
                self._discard_producer()
                raise SinkError(f"{self.name}: storing checkpoints failed (the data is stored): {exc}") from exc
            sent.append(((venue, symbol), trade_id))
        left = producer.flush(max(0.05, deadline - time.monotonic()))
        reports = self._delivery_errors.take()
        if left or reports:
            self._discard_producer()
            error = reports[0][0].str() if reports else "timed out"
            raise SinkError(f"{self.name}: {left or len(reports)} checkpoints not acknowledged (the data is stored):"
                            f" {error}")
        for market, trade_id in sent:
            if trade_id > stored.get(market, trade_id - 1):
                stored[market] = trade_id

    def _remember_rejected(self, key: tuple) -> None:
        rejected = self._rejected
        rejected[key] = None
        if len(rejected) > _REJECTED_REMEMBERED:
            del rejected[next(iter(rejected))]

    def _log_refusals(self, refusals: list[str]) -> None:
        for text in refusals[:_REFUSALS_LOGGED_PER_BATCH]:
            logger.warning("sink %s: refused %s", self.name, text)
        if len(refusals) > _REFUSALS_LOGGED_PER_BATCH:
            logger.warning(
                "sink %s: refused %d more records of the same batch (see sink.%s.records_refused)",
                self.name, len(refusals) - _REFUSALS_LOGGED_PER_BATCH, self.name,
            )

    def _warn_beyond_window(self, count: int) -> None:
        now = time.monotonic()
        if now < self._next_beyond_warning:
            return
        self._next_beyond_warning = now + _WARNING_INTERVAL_S
        logger.warning(
            "sink %s: sent %d records older than the de-duplication window (%d keys); if they were "
            "delivered before, Kafka now holds them twice (sink.%s.beyond_window)",
            self.name, count, self._window.capacity, self.name,
        )

    # --- reading -------------------------------------------------------------------------------

    def resume_points(self, venue: str) -> dict[str, int]:
        with self._lock:
            return {symbol: trade_id for (v, symbol), trade_id in self._checkpoints.items() if v == venue}

    def delivered(self, kind: str, a: str, b: str, natural_id: Hashable) -> bool:
        """Whether the window remembers this record as on the broker (for tests and operators)."""
        with self._lock:
            return self._window.contains(kind, a, b, natural_id)

    # --- connecting ----------------------------------------------------------------------------

    def _client_config(self, client_id: str) -> dict[str, Any]:
        timeout_ms = int(self.delivery_timeout_s * 1000)
        return {
            "bootstrap.servers": ",".join(self.bootstrap_servers),
            "client.id": client_id,
            "socket.timeout.ms": max(1000, timeout_ms),
            "logger": client_logger,
            "error_cb": self._client_error,
        }

    def _producer_config(self) -> dict[str, Any]:
        timeout_ms = int(self.delivery_timeout_s * 1000)
        return {
            **self._client_config(self.client_id),
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": self.compression,
            "linger.ms": _LINGER_MS,
            "batch.size": _BATCH_BYTES,
            "queue.buffering.max.messages": _QUEUE_MESSAGES,
            # Every bound follows delivery_timeout_s, so a write fails within about that long.
            "message.timeout.ms": timeout_ms,
            "request.timeout.ms": max(500, timeout_ms - _LINGER_MS),
            # A few bytes of framing over our own limit, so ours is the one that refuses (and logs).
            "message.max.bytes": max(1 << 20, self.max_record_bytes + 1024),
            "partitioner": "murmur2_random",  # the Java client's placement of keyed messages
            "on_delivery": self._delivery_errors,
            "delivery.report.only.error": True,
            "statistics.interval.ms": _STATS_INTERVAL_MS,
            "stats_cb": self._pid_watch,
        }

    def _discard_producer(self) -> None:
        """After a failure: drop the producer (what it still holds is purged) and rebuild before the
        next write."""
        producer, self._producer = self._producer, None
        self._stale = True
        if producer is not None:
            try:
                producer.purge()
                producer.flush(0)
            except Exception as exc:
                logger.debug("sink %s: closing a failed producer: %r", self.name, exc)
        self._delivery_errors.take()

    def _connect(self) -> None:
        """Make a producer, make sure the checkpoints topic exists, and rebuild the window and the
        checkpoints from what the broker holds. Raises SinkError; leaves the sink stale on failure."""
        self._discard_producer()
        self._client_error.error = None
        self._pid_watch = _ProducerIdWatch()
        try:
            producer = Producer(self._producer_config())
        except (KafkaException, ValueError, TypeError) as exc:  # a bad setting: not retriable
            raise SinkError(f"{self.name}: cannot make a Kafka producer: {exc}") from exc
        try:
            self._ensure_checkpoints_topic()
            window, checkpoints = self._read_back()
            self._await_producer_id(producer)
        except BaseException:
            try:
                producer.purge()
            except Exception:
                pass
            raise
        self._producer = producer
        self._produce = producer.produce
        self._window = window
        self._checkpoints = checkpoints
        self._stale = False

    def _await_producer_id(self, producer: Producer) -> None:
        deadline = time.monotonic() + self.delivery_timeout_s
        while not self._pid_watch.assigned:
            if time.monotonic() > deadline:
                error = self._client_error.error
                raise SinkError(f"{self.name}: the idempotent producer got no producer id from "
                                f"{','.join(self.bootstrap_servers)} within delivery_timeout_s"
                                + (f" ({error.str()})" if error is not None else ""))
            producer.poll(_STATS_INTERVAL_MS / 1000)

    def _unreachable(self, exc: BaseException) -> SinkError:
        return SinkError(f"{self.name}: cannot reach {','.join(self.bootstrap_servers)}: {exc}")

    def _ensure_checkpoints_topic(self) -> None:
        timeout = self.delivery_timeout_s
        admin = AdminClient(self._client_config(f"{self.client_id}-admin"))
        try:
            topics = admin.list_topics(timeout=timeout).topics
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        found = topics.get(self.checkpoints_topic)
        if found is not None and found.error is None:
            return
        futures = admin.create_topics(
            [NewTopic(self.checkpoints_topic, num_partitions=1, config={"cleanup.policy": "compact"})],
            request_timeout=timeout,
        )
        try:
            futures[self.checkpoints_topic].result(timeout)
            logger.info("sink %s: created compacted topic %s", self.name, self.checkpoints_topic)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            # Not fatal: the first checkpoint auto-creates it (not compacted) or fails loudly.
            logger.warning("sink %s: could not create topic %s: %s", self.name, self.checkpoints_topic, exc)

    def _log_ends(self, consumer, partitions: list[TopicPartition], deadline: float) -> dict:
        """(log start, log end) of each non-empty partition, the end from the high watermark of a fetch.

        The offset query alone will not do on Tansu 0.6, whose "latest" offset is the base offset of
        the last record batch plus one: up to a whole producer batch short. Its fetch responses carry
        the right high watermark, so fetch from just below that hint (at most one batch comes back)
        and take the watermark librdkafka saw. On Kafka the hint is already exact and this costs one
        fetch per partition."""
        hints: dict[tuple[str, int], tuple[int, int]] = {}
        for tp in partitions:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=self.delivery_timeout_s)
            except KafkaException as exc:
                raise self._unreachable(exc) from exc
            if high > low:
                hints[(tp.topic, tp.partition)] = (low, high)
        self._consume_to_end(
            consumer, [TopicPartition(t, p, max(low, high - 1)) for (t, p), (low, high) in hints.items()], deadline,
            lambda message: None,
        )
        ends = {}
        for (topic, p), (low, high) in hints.items():
            _, seen = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            ends[(topic, p)] = (low, max(high, seen))
        return ends

    def _consume_to_end(self, consumer, starts: list[TopicPartition], deadline: float, take) -> int:
        """Read each partition from its start offset to its end (librdkafka's end-of-partition event);
        returns how many messages were read."""
        if not starts:
            return 0
        consumer.assign(starts)
        remaining = {(tp.topic, tp.partition) for tp in starts}
        read = 0
        try:
            while remaining:
                if time.monotonic() > deadline:
                    raise SinkError(f"{self.name}: reading back {len(remaining)} partitions timed out")
                for message in consumer.consume(num_messages=10_000, timeout=0.1):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            remaining.discard((message.topic(), message.partition()))
                            continue
                        raise SinkError(f"{self.name}: reading back {message.topic()} failed: {error.str()}")
                    read += 1
                    take(message)
        finally:
            consumer.unassign()
        return read

    def _read_back(self) -> tuple[DeliveredWindow, dict[tuple[str, str], int]]:
        """The window and the checkpoints as the broker has them (see the module docstring)."""
        timeout = self.delivery_timeout_s
        window = DeliveredWindow(self._window.capacity)
        checkpoints: dict[tuple[str, str], int] = {}
        data_topics = sorted(set(self._topics.values()))
        started = time.monotonic()
        deadline = started + max(30.0, timeout)
        read = 0
        try:
            consumer = Consumer({
                **self._client_config(f"{self.client_id}-readback"),
                # librdkafka wants a group id; assign() never joins the group and nothing is committed.
                "group.id": f"{self.client_id}-readback",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",  # a start below the log start lands on the log start
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
                "max.partition.fetch.bytes": 8 << 20,
            })
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        try:
            try:
                topics = consumer.list_topics(timeout=timeout).topics
            except KafkaException as exc:
                raise self._unreachable(exc) from exc
            partitions: list[TopicPartition] = []
            for topic in [*data_topics, self.checkpoints_topic]:
                found = topics.get(topic)
                if found is not None and found.error is None:
                    partitions += [TopicPartition(topic, p) for p in sorted(found.partitions)]
            ends = self._log_ends(consumer, partitions, deadline)
            starts: list[TopicPartition] = []
            cut: set[tuple[str, int]] = set()  # partitions whose older messages were not read
            for (topic, p), (low, high) in ends.items():
                tail = self.checkpoint_tail if topic == self.checkpoints_topic else self.tail_per_partition
                start = max(low, high - tail)
                if start > low:
                    cut.add((topic, p))
                if start < high:
                    starts.append(TopicPartition(topic, p, start))
            lowest: dict[tuple[tuple[str, int], _Market], int] = {}  # per cut partition: lowest id read

            def take(message) -> None:
                value = message.value()
                if message.topic() == self.checkpoints_topic:
                    _take_checkpoint(value, checkpoints)
                else:
                    tp = (message.topic(), message.partition())
                    _take_delivered(value, window, lowest if tp in cut else None, tp)

            read = self._consume_to_end(consumer, starts, deadline, take)
            for (_, market), low in lowest.items():
                market.raise_floor(low - 1)
        finally:
            consumer.close()
        logger.info(
            "sink %s: read back %d messages in %.2fs: %d delivered records remembered, %d checkpoints",
            self.name, read, time.monotonic() - started, len(window), len(checkpoints),
        )
        return window, checkpoints


def _take_delivered(value: bytes | None, window: DeliveredWindow, lowest, tp) -> None:
    try:
        probe = _decode_probe(value)
    except (msgspec.DecodeError, TypeError):
        return  # not one of ours
    if type(probe) is _CheckpointProbe:
        return
    try:
        a, b = probe.market()
        natural_id = probe.natural_id()
    except (OverflowError, ValueError):
        return
    market = window.market(probe.KIND, a, b)
    window.add(market, natural_id)
    if lowest is not None and type(natural_id) is int:
        slot = (tp, market)
        if natural_id < lowest.get(slot, natural_id + 1):
            lowest[slot] = natural_id


def _take_checkpoint(value: bytes | None, checkpoints: dict[tuple[str, str], int]) -> None:
    try:
        probe = _decode_probe(value)
    except (msgspec.DecodeError, TypeError):
        return
    if type(probe) is not _CheckpointProbe:
        return
    market = (probe.venue, probe.symbol)
    if probe.trade_id > checkpoints.get(market, probe.trade_id - 1):
        checkpoints[market] = probe.trade_id


def _describe(record: Any, reason: str) -> str:
    """A log-safe description of a refused record: reprs, cut short (no raw newlines, no megabytes)."""
    route = ROUTES.get(getattr(record, "KIND", None))  # type: ignore[arg-type]
    try:
        a, b = route.market(record) if route else (None, None)
        natural = route.natural_id(record) if route else None
    except AttributeError:
        a = b = natural = None
    return f"{getattr(record, 'KIND', type(record).__name__)} {_short(a)}:{_short(b)} id {_short(natural)}: {reason}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text):,} chars)"
