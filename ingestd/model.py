"""Normalized records: what feeds produce and sinks store.

Every record carries `KIND`, the routing key sinks use to pick a table, stream or topic.
Times are integer microseconds since the Unix epoch (UTC): exact, cheap to compare, and
convertible to any store's native type at the edge.

Structs are `gc=False` and frozen-free on purpose: a feed creates tens of thousands per second,
and msgspec structs without GC tracking cost a fraction of a dataclass.
"""

from __future__ import annotations

from typing import ClassVar, Union

import msgspec


class Trade(msgspec.Struct, gc=False):
    """One executed trade (table `ticks`). Natural key: (venue, symbol, trade_id)."""

    KIND: ClassVar[str] = "trade"
    venue: str
    symbol: str
    trade_id: int
    price: float
    qty: float
    side: str  # taker side: "buy" or "sell"
    ts_us: int  # exchange trade time
    recv_us: int  # when ingestd received it


class BookTop(msgspec.Struct, gc=False):
    """Top-N snapshot of a local order book (table `books`). Natural key: (venue, symbol, update_id)."""

    KIND: ClassVar[str] = "book"
    venue: str
    symbol: str
    update_id: int  # the book's last applied update id when the snapshot was taken
    ts_us: int  # exchange time of that update
    recv_us: int
    bid_px: float
    bid_sz: float
    ask_px: float
    ask_sz: float
    spread_bps: float
    bids: list[tuple[float, float]]  # best first, at most N levels
    asks: list[tuple[float, float]]


class Checkpoint(msgspec.Struct, gc=False):
    """In-band resume marker: every trade of (venue, symbol) with id <= trade_id has been emitted.

    It travels through the same FIFO channel as the trades, so a sink that stores it in the
    same transaction as its batch never records a checkpoint ahead of the data it covers.

    Feeds without trade ids use it for whatever position they resume from, under their own
    venue name: the EVM feed stores the last finalized block per chain, a poller its last
    completed poll time in µs. `trade_id` is then that position.
    """

    KIND: ClassVar[str] = "checkpoint"
    venue: str
    symbol: str
    trade_id: int


class Derivative(msgspec.Struct, gc=False):
    """A perpetual or futures contract's state (table `derivatives`). Natural key: (venue, symbol, ts_us).

    Fields a venue does not send are None, never 0: a funding rate of 0 is a real value.
    """

    KIND: ClassVar[str] = "derivative"
    venue: str
    symbol: str
    ts_us: int  # venue time of the sample
    recv_us: int
    funding_rate: float | None = None
    next_funding_us: int | None = None
    open_interest: float | None = None  # contracts
    open_interest_value: float | None = None  # quote currency
    mark_price: float | None = None
    index_price: float | None = None
    basis: float | None = None  # the venue's basis where it sends one, else mark - index


class DexMetric(msgspec.Struct, gc=False):
    """One poll of a DEX pool (table `dex_metrics`). Natural key: (chain, pool_address, ts_us)."""

    KIND: ClassVar[str] = "dex_metric"
    chain: str
    pool_address: str  # lowercase 0x hex
    ts_us: int  # when the pool was read (the subgraph gives no per-read time)
    recv_us: int
    liquidity: str  # uint128 as decimal digits: exact, and msgpack/JSON-safe
    tvl_usd: float | None = None
    volume_24h_usd: float | None = None
    price: float | None = None  # token1 per token0
    depth_2pct_usd: float | None = None  # USD to move the price 2 % (both sides summed)


class OnchainFlow(msgspec.Struct, gc=False):
    """A finalized ERC-20 Transfer (table `onchain_flows`). Natural key: (chain, block_hash, log_index)."""

    KIND: ClassVar[str] = "onchain_flow"
    chain: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    ts_us: int  # block time
    recv_us: int
    token: str  # contract address, lowercase 0x hex
    from_addr: str
    to_addr: str
    amount: str  # exact decimal scaled by the token's decimals ("1234.5"): uint256 does not fit a float
    from_tag: str | None = None  # address labels ("binance-hot-1", "bridge:arbitrum")
    to_tag: str | None = None


class Price(msgspec.Struct, gc=False):
    """A coin's market data from an aggregator (table `prices`). Natural key: (source, coin_id, ts_us)."""

    KIND: ClassVar[str] = "price"
    source: str  # "coingecko"
    coin_id: str  # the aggregator's id ("bitcoin")
    symbol: str  # upper-case ticker ("BTC")
    ts_us: int  # the aggregator's last_updated
    recv_us: int
    price_usd: float | None = None
    market_cap: float | None = None
    market_cap_rank: int | None = None
    total_volume: float | None = None
    high_24h: float | None = None
    low_24h: float | None = None
    price_change_24h: float | None = None
    price_change_pct_24h: float | None = None
    circulating_supply: float | None = None


class PredictionBook(msgspec.Struct, gc=False):
    """An outcome token's order book on a prediction market (table `prediction_books`, Kafka
    `order_books`). Natural key: (venue, asset_id, ts_us, book_hash)."""

    KIND: ClassVar[str] = "prediction_book"
    venue: str  # "polymarket"
    market: str  # condition id
    asset_id: str  # outcome token id (a uint256 as decimal digits)
    ts_us: int
    recv_us: int
    book_hash: str
    best_bid: float | None
    best_ask: float | None
    bids: list[tuple[float, float]]  # best first
    asks: list[tuple[float, float]]


class PredictionTrade(msgspec.Struct, gc=False):
    """A trade of an outcome token (table `prediction_trades`, Kafka `market_trades`).
    Natural key: (venue, asset_id, tx_hash, ts_us)."""

    KIND: ClassVar[str] = "prediction_trade"
    venue: str
    market: str
    asset_id: str
    ts_us: int
    recv_us: int
    price: float
    size: float
    side: str  # "buy" or "sell", the taker's side
    tx_hash: str
    fee_rate_bps: float | None = None


class WhaleTrade(msgspec.Struct, gc=False):
    """A trade by a watched wallet (table `whale_trades`, Kafka `whale_activity` in the legacy
    service's event shape). Natural key: (trade_id, token_id, trader_address)."""

    KIND: ClassVar[str] = "whale_trade"
    trade_id: str  # transaction hash
    trader_address: str  # lowercase 0x hex
    market_id: str  # condition id
    token_id: str
    side: str  # "BUY" or "SELL", as the legacy events spell it
    size: float
    price: float
    amount: float  # size * price, in USDC
    ts_us: int  # trade time
    detected_us: int  # when ingestd saw it
    pseudonym: str | None = None
    title: str | None = None
    outcome: str | None = None


Record = Union[Trade, BookTop, Checkpoint, Derivative, DexMetric, OnchainFlow, Price, PredictionBook,
               PredictionTrade, WhaleTrade]

RECORD_TYPES: dict[str, type] = {
    cls.KIND: cls
    for cls in (Trade, BookTop, Checkpoint, Derivative, DexMetric, OnchainFlow, Price, PredictionBook,
                PredictionTrade, WhaleTrade)
}


def spread_bps(bid: float, ask: float) -> float:
    """Quoted spread in basis points of the mid price (0 when the book is one-sided)."""
    if bid <= 0 or ask <= 0:
        return 0.0
    mid = (bid + ask) / 2.0
    return (ask - bid) / mid * 10_000.0
