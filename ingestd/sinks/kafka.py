"""The Kafka sink: one JSON message per record, keyed `venue:symbol`, acks=all, idempotent producer.

Topics and messages
-------------------
Each record kind has a route (`ROUTES`): the config option naming its topic, the `event_type` its
messages carry, how a record becomes a message and its natural key. Shipped routes:

    Trade   -> cfg.trades_topic  ("market_trades")  event_type "market_trade"
    BookTop -> cfg.books_topic   ("order_books")    event_type "order_book"

Whale events (cfg.whales_topic, "whale_activity") arrive with a later feed: `register_route()` adds a
kind without touching this module's write path. Message key: UTF-8 `venue:symbol`, so one market's
messages share a partition and stay in order. Values are compact JSON (field names follow the
legacy service's Kafka events where it defined them: `event_type`, `trade_id`, `side`, `size`,
`price`, `amount`, `timestamp` as ISO 8601 UTC):

    {"event_type":"market_trade","venue":"binance","symbol":"BTCUSDT","trade_id":3141592,
     "side":"buy","price":65000.1,"size":0.012,"amount":780.0012,
     "timestamp":"2024-11-01T12:34:56.123Z","timestamp_ms":1730464496123,
     "received_at":"2024-11-01T12:34:56.125Z"}

    {"event_type":"order_book","venue":"binance","symbol":"BTCUSDT","update_id":987654,
     "timestamp":"2024-11-01T12:34:56.123Z","timestamp_ms":1730464496123,
     "received_at":"2024-11-01T12:34:56.125Z","best_bid":65000.0,"best_bid_size":1.2,
     "best_ask":65000.1,"best_ask_size":0.4,"spread_bps":0.0154,
     "bids":[[65000.0,1.2],[64999.9,3.0]],"asks":[[65000.1,0.4],[65000.2,2.5]]}

`side` is the taker side, lower case as everywhere in ingestd. Times are truncated to milliseconds
(the model's microseconds stay exact in the SQLite sink). The Kafka message timestamp is the time
ingestd sent it (CreateTime), never the exchange time: a broker with `message.timestamp.*.max.ms`
limits would otherwise reject a batch over one odd exchange clock. Strings are written verbatim
(JSON escapes quotes, control characters and nothing else; any Unicode passes through). JSON has no
NaN or infinity: msgspec writes such floats as `null`. A record that cannot be a Kafka message is
refused, logged with its reason, counted in `sink.<name>.records_refused`, and the rest of its batch
is written: a string that is not valid Unicode (a lone surrogate), a time the C library cannot
convert, key + value larger than `max_record_bytes` (1,000,000 by default, under Kafka's default
`message.max.bytes` of 1 MiB; Tansu enforces no limit), or a record the broker rejects for good
(MESSAGE_TOO_LARGE for a topic with a lower limit, INVALID_RECORD from broker-side validation:
kafka-python splits a batch down to the offending record; the sink remembers its key so the retry
of the batch skips it and its neighbours get through).

Delivery
--------
`write(batch)` sends every record, flushes, and checks every record's future: it returns only when
the broker acknowledged all of them (acks=all), else raises SinkError and the pipeline retries the
same batch (then spools it). Nothing is dropped silently. A write fails within about
`delivery_timeout_s` (the producer's delivery timeout, also the bound for blocking sends and
connecting). After any failure the producer is closed and a fresh one (new producer id) is made at
the next write: an idempotent producer that lost its broker state cannot always recover (against a
restarted Tansu, kafka-python's epoch bump fails with UnknownError forever).

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
trades already delivered would otherwise produce duplicates. So the sink remembers the natural keys
(kind, venue, symbol, trade_id / update_id) of the most recently *acknowledged* records, and drops a
record whose key it remembers (`sink.<name>.duplicates_skipped`; also within one batch):

* At connect (open, and again after any failed write) the window is rebuilt from the broker: the last
  `tail_per_partition` messages (default 20,000) of every partition of every data topic are read with
  a plain consumer (assign + seek; no consumer group) and their keys taken from the JSON values. The
  broker is the truth: a failed write may have been stored anyway (a timeout after the broker
  appended it), and a broker may have lost data (a restarted Tansu loses everything).
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
* A send from a producer closed after a failure can in principle reach the broker after the
  read-back that follows (a request already on the wire): a narrow race, leading to a duplicate.
* A rebuild replaces the window with what the read-back finds, so after a failure the window is the
  read-back tail again, not the larger set remembered in memory before.
* Consumers that need exactly-once anyway should de-duplicate on the natural key in the message.

Other limits: compression codecs other than gzip need their Python package (python-snappy, lz4,
zstandard), none of which is a dependency: choosing one fails at open, naming the package. The
broker must be reachable at open (the read-back needs it), as the SQLite sink needs its file: open
raises SinkError otherwise. No TLS/SASL settings exist in the config yet.

Speed
-----
kafka-python is pure Python, and its per-record work (building the record, a future per record,
locks) is the cost that limits the whole daemon on two cores. Measured with bench/kafka_sink.py
against a local Tansu: see that file for the figures and the command. Two things here keep it low:
records go straight into kafka-python's record accumulator (`_fast_send`: about a quarter less CPU
per record than `KafkaProducer.send`; guarded, with `send()` as the fallback), and the window keeps
nothing a full garbage collection has to walk (arrays and atom-only dicts).

Tansu 0.6 (the test broker) returns the base offset of a partition's last record batch plus one as
its "latest" offset instead of the log end; the read-back therefore reads up to the high watermark of
fetch responses, never trusting `end_offsets()` alone.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import msgspec
from kafka import codec as kafka_codec
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
)
from kafka.partitioner import Partitioner, murmur2

from ingestd.model import BookTop, Checkpoint, Record, Trade
from ingestd.sinks.base import Sink, SinkError
from ingestd.stats import StatsRegistry, now_us

logger = logging.getLogger("ingestd.sinks.kafka")


class _QuietCancelledRefresh(logging.Filter):
    """kafka-python logs ERROR "Metadata refresh: failed Cancelled" whenever a client is closed while
    a metadata request is in flight (every read-back consumer we close): expected, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "Metadata refresh: failed %s" and record.args and type(record.args[0]).__name__ == "Cancelled"
        )


logging.getLogger("kafka.cluster").addFilter(_QuietCancelledRefresh())

# kafka-python logs every refused connection and metadata retry at WARNING/ERROR: ~75 lines for a 6 s
# broker outage. The sink reports each failure once, as the SinkError the pipeline logs (rate
# limited) with kafka-python's reason in it. So, unless someone configured the "kafka" logger
# already, only its CRITICAL lines pass; set its level (e.g. to DEBUG) to see them all again.
if logging.getLogger("kafka").level == logging.NOTSET:
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

CHECKPOINTS_TOPIC = "ingestd.checkpoints"
DEFAULT_DEDUP_WINDOW = 200_000
DEFAULT_TAIL_PER_PARTITION = 20_000
DEFAULT_CHECKPOINT_TAIL = 100_000
DEFAULT_MAX_RECORD_BYTES = 1_000_000

# Producer tuning, measured with bench/kafka_sink.py against Tansu: 256 KiB batches compress well and
# keep requests few; linger does not matter because write() flushes.
_BATCH_BYTES = 256 * 1024
_LINGER_MS = 5
# Refused records: the first few of a batch are logged one by one, the rest as a count.
_REFUSALS_LOGGED_PER_BATCH = 3
_WARNING_INTERVAL_S = 10.0
# Broker verdicts about one record that no retry can change. kafka-python splits a batch that is too
# large down to single records, and maps KIP-467 record errors to the records at fault, so these
# reach only the offending record's future.
_PERMANENT_RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)
# Natural keys of records the broker rejected for good, so a retried batch skips them client-side
# (their neighbours in the broker's batch fail with them and must be able to go through).
_REJECTED_REMEMBERED = 10_000


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


class CheckpointEvent(msgspec.Struct, tag_field="event_type", tag="checkpoint"):
    venue: str
    symbol: str
    trade_id: int  # every trade of the market with id <= trade_id is stored
    updated_at: str


class _Probe(msgspec.Struct):
    """What the read-back needs from any message; unknown fields are ignored."""

    event_type: str = ""
    venue: str = ""
    symbol: str = ""
    trade_id: int | str | None = None
    update_id: int | str | None = None


_encode = msgspec.json.Encoder().encode
_decode_probe = msgspec.json.Decoder(_Probe).decode


@functools.lru_cache(maxsize=4096)
def _second_prefix(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_ms(us: int) -> str:
    """Microseconds since the epoch -> '2024-11-01T12:34:56.123Z' (truncated to the millisecond)."""
    second, rem = divmod(us, 1_000_000)
    return f"{_second_prefix(second)}.{rem // 1000:03d}Z"


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


# --- routes: record kind -> topic and message ----------------------------------------------------


@dataclass(frozen=True)
class Route:
    kind: str  # Record.KIND
    topic_option: str  # KafkaSinkConfig attribute naming the topic
    event_type: str  # "event_type" of its messages (how the read-back recognizes them)
    id_field: str  # message field holding the natural id within a market
    to_event: Callable[[Any], msgspec.Struct]
    natural_id: Callable[[Any], Hashable]


ROUTES: dict[str, Route] = {}


def register_route(route: Route) -> None:
    """Route another record kind (e.g. whale events, to cfg.whales_topic). Records must have
    `venue` and `symbol` attributes; the natural id is unique within (kind, venue, symbol)."""
    ROUTES[route.kind] = route


register_route(Route(Trade.KIND, "trades_topic", "market_trade", "trade_id", trade_event, lambda r: r.trade_id))
register_route(Route(BookTop.KIND, "books_topic", "order_book", "update_id", book_event, lambda r: r.update_id))


def market_key(venue: str, symbol: str) -> bytes:
    return f"{venue}:{symbol}".encode()


# --- the window of delivered natural keys ----------------------------------------------------------


class _Market:
    __slots__ = ("ids", "floor", "key", "index")

    def __init__(self, key: bytes | None, index: int) -> None:
        # A dict, not a set: CPython's collector stops tracking a dict that holds only atoms (ints,
        # strings), while it walks every element of a set on each full collection.
        self.ids: dict[Hashable, None] = {}
        self.floor: int | None = None  # ids <= floor may have been delivered and forgotten
        self.key = key  # message key, None when venue:symbol is not valid UTF-8
        self.index = index  # position in DeliveredWindow._by_index

    def raise_floor(self, value: int) -> None:
        if self.floor is None or value > self.floor:
            self.floor = value


# codec -> (is its library importable, the PyPI package that provides it)
_CODECS = {
    "snappy": (kafka_codec.has_snappy, "python-snappy"),
    "lz4": (kafka_codec.has_lz4, "lz4"),
    "zstd": (kafka_codec.has_zstd, "zstandard"),
}

_INT64 = range(-(1 << 63), 1 << 63)


class DeliveredWindow:
    """Natural keys of the last `capacity` records known to be on the broker, per (kind, venue, symbol).

    Arrival order, for forgetting the oldest, is a ring of two `array`s (market number, id): arrays
    hold no Python objects, so a full garbage collection does not walk 200,000 entries each time (with
    a deque and sets it added ~18 ms to every full collection, a pause the whole daemon feels). Ids that
    are not 64-bit integers (string ids of other venues) sit in a side dict keyed by ring slot.
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


# --- the sink ------------------------------------------------------------------------------------


class KafkaSink(Sink):
    """Writes trades and book tops to Kafka topics, checkpoints to an internal compacted topic."""

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
        self.compression = None if cfg.compression == "none" else cfg.compression
        self.client_id = cfg.client_id
        self.delivery_timeout_s = float(cfg.delivery_timeout_s)
        self.checkpoints_topic = checkpoints_topic
        self.tail_per_partition = tail_per_partition
        self.checkpoint_tail = checkpoint_tail
        self.max_record_bytes = max_record_bytes
        self._stats = stats
        self._rows_written = f"sink.{name}.rows_written"
        self._duplicates_skipped = f"sink.{name}.duplicates_skipped"
        self._batches = f"sink.{name}.batches"
        self._records_refused = f"sink.{name}.records_refused"
        self._beyond_window = f"sink.{name}.beyond_window"
        self._lock = threading.Lock()
        self._producer = None
        self._send: Callable = None  # type: ignore[assignment]  # (topic, value, key, timestamp_ms) -> future
        self._stale = True  # the producer and window must be (re)made before the next write
        self._opened = False
        self._window = DeliveredWindow(dedup_window)
        self._checkpoints: dict[tuple[str, str], int] = {}  # stored on the broker, highest per market
        self._next_beyond_warning = float("-inf")
        self._rejected: dict[tuple, None] = {}  # (kind, venue, symbol, id), oldest first, bounded

    def topic_for(self, kind: str) -> str:
        return getattr(self.cfg, ROUTES[kind].topic_option)

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._stale:
                self._connect()
            self._opened = True
        logger.info(
            "sink %s: connected to %s (compression=%s); remembering %d delivered records, %d checkpoints",
            self.name, ",".join(self.bootstrap_servers), self.compression or "none",
            len(self._window), len(self._checkpoints),
        )

    def close(self) -> None:
        with self._lock:
            self._opened = False
            self._stale = True
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=min(5.0, self.delivery_timeout_s))
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
        deadline = time.monotonic() + self.delivery_timeout_s
        window = self._window
        send = self._send
        timestamp_ms = int(time.time() * 1000)  # the broker's CreateTime: when ingestd sent it
        known_topics: set[str] = set()
        pending: list[tuple[Any, _Market, Hashable, Any]] = []
        in_flight: set[tuple[int, Hashable]] = set()  # (id(market), natural id) sent by this call
        checkpoints: dict[tuple[str, str], int] = {}
        topics = {kind: self.topic_for(kind) for kind in ROUTES}
        duplicates = beyond = 0
        refusals: list[str] = []
        max_bytes = self.max_record_bytes

        for record in batch:
            kind = getattr(record, "KIND", None)
            if kind == Checkpoint.KIND:
                key = (record.venue, record.symbol)
                if record.trade_id > checkpoints.get(key, record.trade_id - 1):
                    checkpoints[key] = record.trade_id
                continue
            route = ROUTES.get(kind)  # type: ignore[arg-type]
            if route is None:
                # A programming error, not a store failure: no retry can fix it, so not a SinkError.
                raise TypeError(f"KafkaSink cannot store {record!r}")
            market = window.market(kind, record.venue, record.symbol)
            natural_id = route.natural_id(record)
            if natural_id in market.ids or (id(market), natural_id) in in_flight:
                duplicates += 1
                continue
            if self._rejected and (kind, record.venue, record.symbol, natural_id) in self._rejected:
                refusals.append(_describe(record, "the broker rejected it for good before"))
                continue
            if market.key is None:
                refusals.append(_describe(record, "venue:symbol is not valid Unicode"))
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
            try:
                if topic not in known_topics:
                    producer.partitions_for(topic)  # waits up to max_block_ms for its metadata
                    known_topics.add(topic)
                future = send(topic, value, market.key, timestamp_ms)
            except MessageSizeTooLargeError as exc:  # the client's own estimate, with framing
                refusals.append(_describe(record, str(exc)))
                continue
            except (KafkaError, ValueError) as exc:  # e.g. no metadata for the topic within max_block_ms
                self._discard_producer()
                raise SinkError(f"{self.name}: send to {topic} failed: {exc!r}") from exc
            pending.append((future, market, natural_id, record))
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
                f"({acked} were; a retry sends only the rest): {first_error!r}"
            )
        if checkpoints:
            self._store_checkpoints(producer, checkpoints, deadline)
        if stats is not None:
            stats.incr(self._batches)

    def _settle(self, producer, pending, deadline, refusals: list[str]) -> tuple[int, int, BaseException | None]:
        """Flush, then sort every future into acknowledged (remembered in the window), rejected for
        good by the broker (refused, remembered so a retry skips it) or failed."""
        if pending:
            try:
                producer.flush(timeout=max(0.05, deadline - time.monotonic()))
            except KafkaError:
                pass  # undone futures are counted as failures below
        add = self._window.add
        acked = failures = 0
        first_error: BaseException | None = None
        for future, market, natural_id, record in pending:
            if future.is_done and future.succeeded():
                add(market, natural_id)
                acked += 1
            elif future.is_done and isinstance(future.exception, _PERMANENT_RECORD_ERRORS):
                refusals.append(_describe(record, f"rejected by the broker: {future.exception!r}"))
                self._remember_rejected((record.KIND, record.venue, record.symbol, natural_id))
            else:
                failures += 1
                if first_error is None:
                    first_error = future.exception if future.is_done else TimeoutError(
                        f"not acknowledged within delivery_timeout_s={self.delivery_timeout_s}"
                    )
        return acked, failures, first_error

    def _store_checkpoints(self, producer, checkpoints: dict[tuple[str, str], int], deadline: float) -> None:
        stored = self._checkpoints
        fresh = {k: v for k, v in checkpoints.items() if v > stored.get(k, v - 1)}
        if not fresh:
            return
        updated = iso_ms(now_us())
        futures = []
        try:
            for (venue, symbol), trade_id in fresh.items():
                try:
                    key = market_key(venue, symbol)
                    value = _encode(CheckpointEvent(venue, symbol, trade_id, updated))
                except (UnicodeEncodeError, ValueError, TypeError, OverflowError) as exc:
                    logger.warning("sink %s: checkpoint %r dropped: %s", self.name, (venue, symbol, trade_id), exc)
                    continue
                futures.append(((venue, symbol), trade_id, producer.send(self.checkpoints_topic, value=value, key=key)))
            producer.flush(timeout=max(0.05, deadline - time.monotonic()))
        except KafkaError as exc:
            self._discard_producer()
            raise SinkError(f"{self.name}: storing checkpoints failed (the data is stored): {exc!r}") from exc
        failed = [f for _, _, f in futures if not (f.is_done and f.succeeded())]
        for market, trade_id, future in futures:
            if future.is_done and future.succeeded() and trade_id > stored.get(market, trade_id - 1):
                stored[market] = trade_id
        if failed:
            self._discard_producer()
            error = failed[0].exception if failed[0].is_done else "timed out"
            raise SinkError(f"{self.name}: {len(failed)} checkpoints not acknowledged (the data is stored): {error!r}")

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

    def delivered(self, kind: str, venue: str, symbol: str, natural_id: Hashable) -> bool:
        """Whether the window remembers this record as on the broker (for tests and operators)."""
        with self._lock:
            return self._window.contains(kind, venue, symbol, natural_id)

    # --- connecting ----------------------------------------------------------------------------

    def _discard_producer(self) -> None:
        """After a failure: drop the producer (pending sends fail now) and rebuild before the next write."""
        producer, self._producer = self._producer, None
        self._stale = True
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:
                logger.debug("sink %s: closing a failed producer: %r", self.name, exc)

    def _connect(self) -> None:
        """Make a producer, make sure the checkpoints topic exists, and rebuild the window and the
        checkpoints from what the broker holds. Raises SinkError; leaves the sink stale on failure."""
        self._discard_producer()
        codec = _CODECS.get(self.compression)
        if codec is not None and not codec[0]():
            raise SinkError(
                f"{self.name}: compression {self.compression!r} needs the Python package {codec[1]!r},"
                " which is not installed (gzip needs nothing)"
            )
        if self.compression == "gzip":
            _set_gzip_level()
        timeout_ms = int(self.delivery_timeout_s * 1000)
        try:
            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                compression_type=self.compression,
                batch_size=_BATCH_BYTES,
                linger_ms=_LINGER_MS,
                # Every bound follows delivery_timeout_s, so a write fails within about that long.
                delivery_timeout_ms=timeout_ms,
                request_timeout_ms=max(500, timeout_ms - _LINGER_MS),
                max_block_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
                # A few bytes of framing over our own limit, so ours is the one that refuses (and logs).
                max_request_size=max(1 << 20, self.max_record_bytes + 1024),
                partitioner=_CachedKeyPartitioner(),  # _fast_send relies on this class
                metrics_enabled=False,  # ~10 % of send() time; ingestd keeps its own counters
            )
        except (RuntimeError, ValueError) as exc:  # e.g. lz4 without its Python package: not retriable
            raise SinkError(f"{self.name}: cannot make a Kafka producer: {exc}") from exc
        except KafkaError as exc:
            raise SinkError(f"{self.name}: cannot reach {','.join(self.bootstrap_servers)}: {exc!r}") from exc
        try:
            self._ensure_checkpoints_topic()
            window, checkpoints = self._read_back()
        except BaseException:
            try:
                producer.close(timeout=0)
            except Exception:
                pass
            raise
        self._producer = producer
        self._send = _fast_send(producer) if USE_FAST_SEND else None
        if self._send is None:
            self._send = _plain_send(producer)
        self._window = window
        self._checkpoints = checkpoints
        self._stale = False

    def _ensure_checkpoints_topic(self) -> None:
        timeout_ms = int(self.delivery_timeout_s * 1000)
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-admin",
                request_timeout_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
            )
        except KafkaError as exc:
            raise SinkError(f"{self.name}: cannot reach {','.join(self.bootstrap_servers)}: {exc!r}") from exc
        try:
            if self.checkpoints_topic in admin.list_topics():
                return
            admin.create_topics(
                [NewTopic(self.checkpoints_topic, 1, -1, topic_configs={"cleanup.policy": "compact"})]
            )
            logger.info("sink %s: created compacted topic %s", self.name, self.checkpoints_topic)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            # Not fatal: the first checkpoint send auto-creates it (not compacted) or fails loudly.
            logger.warning("sink %s: could not create topic %s: %r", self.name, self.checkpoints_topic, exc)
        finally:
            admin.close()

    def _read_back(self) -> tuple[DeliveredWindow, dict[tuple[str, str], int]]:
        """The window and the checkpoints as the broker has them (see the module docstring)."""
        timeout_ms = int(self.delivery_timeout_s * 1000)
        window = DeliveredWindow(self._window.capacity)
        checkpoints: dict[tuple[str, str], int] = {}
        routes_by_event = {route.event_type: route for route in ROUTES.values()}
        data_topics = sorted({self.topic_for(kind) for kind in ROUTES})
        started = time.monotonic()
        deadline = started + max(30.0, self.delivery_timeout_s)
        read = 0
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-readback",
                enable_auto_commit=False,
                allow_auto_create_topics=False,
                auto_offset_reset="earliest",  # a seek below the log start lands on the log start
                max_poll_records=20_000,
                fetch_max_wait_ms=50,
                max_partition_fetch_bytes=8 << 20,
                request_timeout_ms=max(1000, timeout_ms),
                bootstrap_timeout_ms=timeout_ms,
                metrics_enabled=False,
            )
        except KafkaError as exc:
            raise SinkError(f"{self.name}: cannot reach {','.join(self.bootstrap_servers)}: {exc!r}") from exc
        try:
            tps = []
            for topic in [*data_topics, self.checkpoints_topic]:
                tps += [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not tps:
                return window, checkpoints
            consumer.assign(tps)
            begin = consumer.beginning_offsets(tps)
            end = self._log_ends(consumer, tps, begin, deadline)
            cut: set = set()  # partitions whose older messages were not read
            for tp in tps:
                tail = self.checkpoint_tail if tp.topic == self.checkpoints_topic else self.tail_per_partition
                start = max(begin[tp], end[tp] - tail)
                if start > begin[tp]:
                    cut.add(tp)
                consumer.seek(tp, start)
            lowest: dict[tuple[TopicPartition, _Market], int] = {}  # per cut partition: lowest id read
            remaining = set(tps)
            while remaining:
                if time.monotonic() > deadline:
                    raise SinkError(f"{self.name}: reading back {len(remaining)} partitions timed out")
                for tp, messages in consumer.poll(timeout_ms=100).items():
                    read += len(messages)
                    if tp.topic == self.checkpoints_topic:
                        _take_checkpoints(messages, checkpoints)
                    else:
                        _take_delivered(messages, routes_by_event, window, lowest if tp in cut else None, tp)
                for tp in list(remaining):
                    if consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
            for (_, market), low in lowest.items():
                if type(low) is int:
                    market.raise_floor(low - 1)
        except KafkaError as exc:
            raise SinkError(f"{self.name}: reading back from {','.join(self.bootstrap_servers)} failed: {exc!r}") from exc
        finally:
            consumer.close()
        logger.info(
            "sink %s: read back %d messages in %.2fs: %d delivered records remembered, %d checkpoints",
            self.name, read, time.monotonic() - started, len(window), len(checkpoints),
        )
        return window, checkpoints

    def _log_ends(self, consumer, tps, begin, deadline) -> dict:
        """Each partition's log end offset, from the high watermark of a fetch response.

        `end_offsets()` alone will not do on Tansu 0.6, whose "latest" offset is the base offset of
        the last record batch plus one: up to a whole producer batch short. Its fetch responses carry
        the right high watermark, so fetch once from just below that hint (at most one batch comes
        back) and take the high watermark. On Kafka the hint is already exact and this costs one fetch.
        """
        hint = consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begin[tp], hint[tp] - 1))
        unknown = set(tps)
        while unknown:
            if time.monotonic() > deadline:
                raise SinkError(f"{self.name}: no high watermark for {len(unknown)} partitions in time")
            consumer.poll(timeout_ms=100)  # records discarded: the read proper follows
            unknown = {tp for tp in unknown if consumer.highwater(tp) is None}
        return {tp: max(hint[tp], consumer.highwater(tp)) for tp in tps}


def _take_delivered(messages, routes_by_event, window: DeliveredWindow, lowest, tp) -> None:
    for message in messages:
        try:
            probe = _decode_probe(message.value)
        except (msgspec.DecodeError, TypeError):
            continue  # not one of ours
        route = routes_by_event.get(probe.event_type)
        if route is None:
            continue
        natural_id = getattr(probe, route.id_field)
        if natural_id is None:
            continue
        market = window.market(route.kind, probe.venue, probe.symbol)
        window.add(market, natural_id)
        if lowest is not None and type(natural_id) is int:
            slot = (tp, market)
            if natural_id < lowest.get(slot, natural_id + 1):
                lowest[slot] = natural_id


def _take_checkpoints(messages, checkpoints: dict[tuple[str, str], int]) -> None:
    for message in messages:
        try:
            probe = _decode_probe(message.value)
        except (msgspec.DecodeError, TypeError):
            continue
        if probe.event_type != "checkpoint" or type(probe.trade_id) is not int:
            continue
        market = (probe.venue, probe.symbol)
        if probe.trade_id > checkpoints.get(market, probe.trade_id - 1):
            checkpoints[market] = probe.trade_id


def _describe(record: Any, reason: str) -> str:
    """A log-safe description of a refused record: reprs, cut short (no raw newlines, no megabytes)."""
    natural = getattr(record, "trade_id", getattr(record, "update_id", None))
    return (
        f"{getattr(record, 'KIND', type(record).__name__)} {_short(getattr(record, 'venue', None))}:"
        f"{_short(getattr(record, 'symbol', None))} id {_short(natural)}: {reason}"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text):,} chars)"


class _CachedKeyPartitioner(Partitioner):
    """kafka-python's DefaultPartitioner (murmur2 of the key, as the Java client), with the hash of
    each key cached: pure-Python murmur2 was ~20 % of send() time, and a feed has few distinct keys."""

    _MAX_CACHED = 100_000

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"no partitions known for topic {topic}")
        if serialized_key is None:
            return random.choice(sorted(partitions))
        h = self._hashes.get(serialized_key)
        if h is None:
            if len(self._hashes) >= self._MAX_CACHED:
                self._hashes.clear()
            h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        return h % len(partitions)  # Kafka numbers partitions 0..n-1


# --- sending -------------------------------------------------------------------------------------

#: Take the short path into kafka-python's accumulator when its internals look as expected.
USE_FAST_SEND = True


def _plain_send(producer: KafkaProducer) -> Callable:
    def send(topic: str, value: bytes, key: bytes, timestamp_ms: int):
        return producer.send(topic, value=value, key=key, timestamp_ms=timestamp_ms)

    return send


def _fast_send(producer: KafkaProducer) -> Callable | None:
    """`KafkaProducer.send` without its per-call overhead, or None when this kafka-python differs.

    Per record, `send()` validates headers, re-checks metadata, estimates the size, formats `str(self)`
    for a debug log line and builds a TopicPartition before it reaches the record accumulator: about a
    quarter of the producer's CPU per record (bench/kafka_sink.py, 19-20 µs -> 13-16 µs per record
    including the sender thread), and the producer's CPU is what limits the whole daemon on two cores.
    This goes straight to `RecordAccumulator.append` and wakes the sender as `send()` does. What it skips
    is done elsewhere: metadata is awaited once per topic per write (`partitions_for`), sizes are
    checked by `write()` against a limit below `max_request_size`, keys and values are always bytes,
    there are no headers, and the producer is idempotent, never transactional.
    Private attributes: checked here, so a kafka-python that moved them gets the plain path instead.
    """
    try:
        accumulator = producer._accumulator
        wakeup = producer._sender.wakeup
        cluster = producer._metadata
        partitioner = producer.config["partitioner"]
        params = list(inspect.signature(accumulator.append).parameters)
        transactional = producer._transaction_manager is not None and producer._transaction_manager.is_transactional()
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if params[:5] != ["tp", "timestamp_ms", "key", "value", "headers"] or transactional:
        return None
    if not isinstance(partitioner, _CachedKeyPartitioner):
        return None
    append = accumulator.append
    partition = partitioner.partition
    tps: dict[tuple[str, int], TopicPartition] = {}

    def send(topic: str, value: bytes, key: bytes, timestamp_ms: int):
        p = partition(topic, key, key, value, value, cluster)
        tp = tps.get((topic, p))
        if tp is None:
            tp = tps[(topic, p)] = TopicPartition(topic, p)
        result = append(tp, timestamp_ms, key, value, [])
        # (future, batch_is_full, new_batch_created[, abort_for_new_batch]): as send(), wake the sender
        # when a batch is ready to go.
        if result[1] or result[2]:
            wakeup()
        return result[0]

    return send


#: gzip level of record batches. kafka-python hardcodes 9; the Java client and librdkafka default to 6
#: (zlib's default). On a batch of 1000 trades, 9 costs 2.8 ms of CPU for 6.1 kB, 6 costs 0.7 ms for
#: 6.5 kB: level 9 buys 7 % less network and disk for four times the CPU, and the CPU is the
#: bottleneck here (the sender thread's CPU per record fell from ~15 to ~9.5 µs, bench/kafka_sink.py).
GZIP_LEVEL = 6


def _set_gzip_level() -> None:
    """Make kafka-python's v2 record batches use GZIP_LEVEL (it offers no setting for it).

    Replaces the module global its batch builder calls, only while that is still kafka-python's own
    function (so a kafka-python that changed shape is left alone). Process-wide, and harmless for any
    other producer in the process: every gzip level is read by every consumer.
    """
    from kafka.record import default_records

    if getattr(default_records, "gzip_encode", None) is kafka_codec.gzip_encode:
        default_records.gzip_encode = functools.partial(kafka_codec.gzip_encode, compresslevel=GZIP_LEVEL)

