"""Where each record kind is stored in the SQL sinks: one declaration per kind, used by both.

A `Table` names the table, its columns in order (each taken from one struct field and converted by
its column type), and the kind's natural key (from the struct's docstring in `ingestd.model`).
From it the SQLite sink builds its multi-row `INSERT OR IGNORE` and the PostgreSQL sink its temp
table, binary COPY types and `INSERT ... SELECT ... ON CONFLICT (key) DO NOTHING`; both screen
records against it and read rows back into records with it. Column names are the same in both
stores (SQLite mirrors PostgreSQL); how a column type maps to each store:

    type      SQLite           PostgreSQL (COPY as -> stored as)
    TEXT      TEXT             text -> text
    BIGINT    INTEGER          int8 -> bigint
    INTEGER   INTEGER          int8 -> integer (range checked when screening)
    FLOAT     REAL             float8 -> double precision
    TIME      INTEGER (µs)     int8 µs -> timestamptz, exactly
    DECIMAL   TEXT             text -> numeric, exactly
    LEVELS    TEXT (JSON)      text -> jsonb, [[price, size], ...] best first

Trade, BookTop and Checkpoint are declared too (screening, log descriptions), but the sinks keep
their hand-tuned insert paths for them: ticks and books carry an `asset_id` looked up per symbol,
and checkpoints are upserted forward-only. `GENERIC` lists the kinds stored through the
declarations alone.

The SQL schemas themselves are written out by hand (ingestd/db/migrations, `_SCHEMA_V*` in
ingestd/sinks/sqlite.py), because a shipped schema step must never change when a declaration here
does; tests check that the declarations and both schemas agree.
"""

from __future__ import annotations

import logging
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import msgspec

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

TEXT = "text"
BIGINT = "bigint"
INTEGER = "integer"
FLOAT = "float"
TIME = "time"
DECIMAL = "decimal"
LEVELS = "levels"

# Refused records logged one by one per batch, at most; the rest are summed up in one line.
MAX_REFUSALS_LOGGED = 20

_INT64 = (-(1 << 63), (1 << 63) - 1)
_INT32 = (-(1 << 31), (1 << 31) - 1)
# What `numeric` takes exactly and a reader expects of an amount: digits, optionally a fraction.
# No exponent, NaN or Infinity (numeric would accept those, and they are no token amount).
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")

_encode_json = msgspec.json.Encoder().encode
_decode_levels = msgspec.json.Decoder(list[tuple[float, float]]).decode


@dataclass(frozen=True)
class Column:
    name: str  # the column, in SQLite and PostgreSQL alike
    field: str  # the struct field it is taken from
    type: str  # TEXT, BIGINT, INTEGER, FLOAT, TIME, DECIMAL or LEVELS
    nullable: bool = True


@dataclass(frozen=True)
class Table:
    name: str
    record: type
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # natural key, column names, as documented in ingestd.model
    row: Callable[[Any], tuple] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "row", _row_builder(self.columns))

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def time_field(self) -> str:
        """The struct field of the `ts` column (the partitioning column in PostgreSQL)."""
        return self.column("ts").field

    @property
    def partition_key(self) -> tuple[str, ...]:
        """The unique key in PostgreSQL, which must include the partitioning column `ts`."""
        return self.key if "ts" in self.key else (*self.key, "ts")

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def record_from_row(self, values: Iterable[Any]) -> Any:
        """The record a stored row holds: values in column order, times as µs, decimals and levels as text."""
        fields = {}
        for c, value in zip(self.columns, values):
            if c.type == LEVELS and value is not None:
                value = _decode_levels(value)
            fields[c.field] = value
        return self.record(**fields)


def _row_builder(columns: tuple[Column, ...]) -> Callable[[Any], tuple]:
    """record -> column values in order, as both stores bind them (levels as JSON text).

    attrgetter fetches every field in one C call; only level lists need converting."""
    get = operator.attrgetter(*(c.field for c in columns))
    levels = [i for i, c in enumerate(columns) if c.type == LEVELS]
    if not levels:
        return get

    def row(record: Any) -> tuple:
        values = list(get(record))
        for i in levels:
            values[i] = _encode_json(values[i]).decode()
        return tuple(values)

    return row


def _key(name: str, field_name: str, type_: str) -> Column:
    return Column(name, field_name, type_, nullable=False)


TICKS = Table(
    "ticks", Trade,
    (
        _key("ts", "ts_us", TIME), _key("venue", "venue", TEXT), _key("symbol", "symbol", TEXT),
        _key("trade_id", "trade_id", BIGINT), Column("price", "price", FLOAT, False),
        Column("qty", "qty", FLOAT, False), Column("side", "side", TEXT), Column("recv_ts", "recv_us", TIME, False),
    ),
    key=("venue", "symbol", "trade_id"),
)

BOOKS = Table(
    "books", BookTop,
    (
        _key("ts", "ts_us", TIME), _key("venue", "venue", TEXT), _key("symbol", "symbol", TEXT),
        _key("update_id", "update_id", BIGINT),
        *(Column(f, f, FLOAT, False) for f in ("bid_px", "bid_sz", "ask_px", "ask_sz", "spread_bps")),
        Column("bids", "bids", LEVELS, False), Column("asks", "asks", LEVELS, False),
        Column("recv_ts", "recv_us", TIME, False),
    ),
    key=("venue", "symbol", "update_id"),
)

CHECKPOINTS = Table(
    "checkpoints", Checkpoint,
    (_key("venue", "venue", TEXT), _key("symbol", "symbol", TEXT), _key("trade_id", "trade_id", BIGINT)),
    key=("venue", "symbol"),
)

DERIVATIVES = Table(
    "derivatives", Derivative,
    (
        _key("ts", "ts_us", TIME), _key("venue", "venue", TEXT), _key("symbol", "symbol", TEXT),
        Column("funding_rate", "funding_rate", FLOAT), Column("next_funding_time", "next_funding_us", TIME),
        Column("open_interest", "open_interest", FLOAT), Column("open_interest_value", "open_interest_value", FLOAT),
        Column("mark_price", "mark_price", FLOAT), Column("index_price", "index_price", FLOAT),
        Column("basis", "basis", FLOAT), Column("recv_ts", "recv_us", TIME),
    ),
    key=("venue", "symbol", "ts"),
)

DEX_METRICS = Table(
    "dex_metrics", DexMetric,
    (
        _key("ts", "ts_us", TIME), _key("chain", "chain", TEXT), _key("pool_address", "pool_address", TEXT),
        Column("tvl_usd", "tvl_usd", FLOAT), Column("volume_24h_usd", "volume_24h_usd", FLOAT),
        Column("liquidity", "liquidity", DECIMAL), Column("price", "price", FLOAT),
        Column("depth_2pct_usd", "depth_2pct_usd", FLOAT), Column("recv_ts", "recv_us", TIME),
    ),
    key=("chain", "pool_address", "ts"),
)

ONCHAIN_FLOWS = Table(
    "onchain_flows", OnchainFlow,
    (
        _key("ts", "ts_us", TIME), _key("chain", "chain", TEXT), Column("block_number", "block_number", BIGINT),
        _key("block_hash", "block_hash", TEXT), Column("tx_hash", "tx_hash", TEXT),
        _key("log_index", "log_index", INTEGER), Column("token", "token", TEXT),
        Column("from_addr", "from_addr", TEXT), Column("to_addr", "to_addr", TEXT),
        Column("amount", "amount", DECIMAL), Column("from_tag", "from_tag", TEXT), Column("to_tag", "to_tag", TEXT),
        Column("recv_ts", "recv_us", TIME),
    ),
    key=("chain", "block_hash", "log_index"),
)

PRICES = Table(
    "prices", Price,
    (
        _key("ts", "ts_us", TIME), _key("source", "source", TEXT), _key("coin_id", "coin_id", TEXT),
        Column("symbol", "symbol", TEXT), Column("price_usd", "price_usd", FLOAT),
        Column("market_cap", "market_cap", FLOAT), Column("market_cap_rank", "market_cap_rank", INTEGER),
        Column("total_volume", "total_volume", FLOAT), Column("high_24h", "high_24h", FLOAT),
        Column("low_24h", "low_24h", FLOAT), Column("price_change_24h", "price_change_24h", FLOAT),
        Column("price_change_pct_24h", "price_change_pct_24h", FLOAT),
        Column("circulating_supply", "circulating_supply", FLOAT), Column("recv_ts", "recv_us", TIME),
    ),
    key=("source", "coin_id", "ts"),
)

PREDICTION_BOOKS = Table(
    "prediction_books", PredictionBook,
    (
        _key("ts", "ts_us", TIME), _key("venue", "venue", TEXT), Column("market", "market", TEXT),
        _key("asset_id", "asset_id", TEXT), _key("book_hash", "book_hash", TEXT),
        Column("best_bid", "best_bid", FLOAT), Column("best_ask", "best_ask", FLOAT),
        Column("bids", "bids", LEVELS, False), Column("asks", "asks", LEVELS, False),
        Column("recv_ts", "recv_us", TIME),
    ),
    key=("venue", "asset_id", "ts", "book_hash"),
)

PREDICTION_TRADES = Table(
    "prediction_trades", PredictionTrade,
    (
        _key("ts", "ts_us", TIME), _key("venue", "venue", TEXT), Column("market", "market", TEXT),
        _key("asset_id", "asset_id", TEXT), Column("price", "price", FLOAT), Column("size", "size", FLOAT),
        Column("side", "side", TEXT), _key("tx_hash", "tx_hash", TEXT), Column("fee_rate_bps", "fee_rate_bps", FLOAT),
        Column("recv_ts", "recv_us", TIME),
    ),
    key=("venue", "asset_id", "tx_hash", "ts"),
)

WHALE_TRADES = Table(
    "whale_trades", WhaleTrade,
    (
        _key("ts", "ts_us", TIME), _key("trade_id", "trade_id", TEXT),
        _key("trader_address", "trader_address", TEXT), Column("market_id", "market_id", TEXT),
        _key("token_id", "token_id", TEXT), Column("side", "side", TEXT), Column("size", "size", FLOAT),
        Column("price", "price", FLOAT), Column("amount", "amount", FLOAT),
        Column("detected_at", "detected_us", TIME), Column("pseudonym", "pseudonym", TEXT),
        Column("title", "title", TEXT), Column("outcome", "outcome", TEXT),
    ),
    key=("trade_id", "token_id", "trader_address"),
)

# Kinds stored through their declaration alone, in the order a batch stores them.
GENERIC: tuple[Table, ...] = (
    DERIVATIVES, DEX_METRICS, ONCHAIN_FLOWS, PRICES, PREDICTION_BOOKS, PREDICTION_TRADES, WHALE_TRADES,
)
BY_KIND: dict[str, Table] = {t.record.KIND: t for t in (TICKS, BOOKS, CHECKPOINTS, *GENERIC)}
BY_NAME: dict[str, Table] = {t.name: t for t in BY_KIND.values()}

# The kinds whose `symbol` names a market that gets an `assets` row (see asset_symbols).
ASSET_KINDS: tuple[Table, ...] = (TICKS, BOOKS, DERIVATIVES)

_symbol_of = operator.attrgetter("symbol")


def asset_symbols(groups: dict[Table, list]) -> set[str]:
    """The symbols of a grouped batch that both SQL sinks register in `assets` before storing it.

    `assets.symbol` holds venue market symbols ('BTCUSDT': the legacy service's whitelist; "the sink
    registers every market symbol it stores", migration 0001), so the kinds registered are those
    whose `symbol` is one: trades, book tops and derivatives (a contract's symbol, 'BTCUSDT' on
    Bybit, names the same market as the spot pair of that name, and shares its row, as one pair on
    two venues does). `ticks` and `books` carry the row's asset_id; `derivatives` has no such column
    (neither has the legacy schema): join on symbol. The other kinds name no such market:

    - Price: the aggregator's coin id ('bitcoin') is no market symbol, and its ticker ('BTC') is not
      unique among coins, so under `assets.symbol UNIQUE` two coins would share one row. A price is
      identified by (source, coin_id) in `prices`.
    - DexMetric: a pool is a pair of assets, not one; the legacy schema keeps pools in `dex_pools`,
      and that table is an input (the Uniswap feed polls its rows besides the configured pools), so
      a sink filling it with every pool it stores would keep a pool polled after it left the config.
    - OnchainFlow: its token is a contract address. `assets` has chain and address columns, but its
      symbol (NOT NULL UNIQUE) would have to be made up, the record carrying no ticker, and an
      operator's own row for the token ('USDC', 'ethereum', '0xa0b8...') would be a second one.
    - PredictionBook, PredictionTrade, WhaleTrade: an outcome token id (a uint256) names one outcome
      of one market; thousands of them come and resolve, each keyed by (venue, asset_id) in its own
      table, and as `assets` rows they would bury the few real ones (sector, risk tags).
    - Checkpoint: its symbol names a resume position (a chain, a poller), not always a market.
    """
    symbols: set[str] = set()
    for table in ASSET_KINDS:
        records = groups.get(table)
        if records:
            symbols.update(map(_symbol_of, records))
    return symbols


# --- screening ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one store can hold."""

    store: str  # for messages: "PostgreSQL"
    nul_in_text: bool  # SQLite keeps NUL characters; PostgreSQL text cannot hold them
    time_range: tuple[int, int]  # µs
    time_words: str  # how the range reads in a message: "a time between 1970 and 9999"


def refusal_reason(record: Record, limits: Limits) -> str | None:
    """Why the store cannot hold this record as it is, or None when it can.

    Raises TypeError for an object that is no record kind (a bug, not bad input)."""
    table = BY_KIND.get(getattr(record, "KIND", None))  # type: ignore[arg-type]
    if table is None or type(record) is not table.record:
        raise TypeError(f"cannot store {record!r}")
    for c in table.columns:
        value = getattr(record, c.field)
        if value is None and c.nullable:
            continue
        reason = _value_problem(c, value, limits)
        if reason is not None:
            return reason
    return None


def _value_problem(c: Column, value: Any, limits: Limits) -> str | None:
    name = c.field
    if c.type == TEXT:
        if not isinstance(value, str):
            return f"{name} is {type(value).__name__}, not text"
        if not limits.nul_in_text and "\x00" in value:
            return f"{name} contains a NUL character, which {limits.store} text cannot hold"
        return _unicode_problem(name, value)
    if c.type in (BIGINT, INTEGER):
        low, high = _INT64 if c.type == BIGINT else _INT32
        if not isinstance(value, int) or not low <= value <= high:
            return f"{name}={value!r} is not a {64 if c.type == BIGINT else 32}-bit integer"
        return None
    if c.type == TIME:
        low, high = limits.time_range
        if not isinstance(value, int) or not low <= value <= high:
            return f"{name}={value!r} is not {limits.time_words} in microseconds"
        return None
    if c.type == FLOAT:
        if isinstance(value, str):
            return f"{name}={value!r} is not a number"
        try:
            float(value)
        except (TypeError, ValueError, OverflowError):
            return f"{name}={value!r} is not a number"
        return None
    if c.type == DECIMAL:
        if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
            shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
            return f"{name}={shown!r} is not an exact decimal number (digits, optionally a '.' and more digits)"
        return None
    if c.type == LEVELS:
        try:
            _decode_levels(_encode_json(value))
        except (TypeError, ValueError, OverflowError, msgspec.MsgspecError) as exc:
            return f"{name} are not [price, size] pairs: {exc}"
        return None
    raise AssertionError(f"unknown column type {c.type!r}")


def _unicode_problem(name: str, value: str) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid Unicode (it holds a lone surrogate)"
    return None


def screen(batch: Iterable[Record], limits: Limits) -> tuple[list[Record], list[tuple[Record, str]]]:
    """Split a batch into the records the store can hold, in order, and the refused ones with why."""
    kept: list[Record] = []
    refusals: list[tuple[Record, str]] = []
    for record in batch:
        reason = refusal_reason(record, limits)
        if reason is None:
            kept.append(record)
        else:
            refusals.append((record, reason))
    return kept, refusals


def describe_record(record: Record) -> str:
    """A short, log-safe description: kind and natural key (repr shows control characters escaped)."""
    table = BY_KIND.get(getattr(record, "KIND", None))  # type: ignore[arg-type]
    if table is None:
        text = f"{type(record).__name__} {record!r}"
    else:
        parts = [f"{table.column(name).field}={getattr(record, table.column(name).field)!r}" for name in table.key]
        text = f"{record.KIND} {' '.join(parts)}"
    return text if len(text) <= 300 else text[:297] + "..."


def log_refusals(logger: logging.Logger, sink_name: str, refusals: list[tuple[Record, str]]) -> None:
    for record, reason in refusals[:MAX_REFUSALS_LOGGED]:
        logger.warning("sink %s: refused %s: %s", sink_name, describe_record(record), reason)
    if len(refusals) > MAX_REFUSALS_LOGGED:
        logger.warning(
            "sink %s: refused %d more records of this batch (not listed)", sink_name, len(refusals) - MAX_REFUSALS_LOGGED
        )


def group_by_table(batch: Iterable[Record], store: str) -> dict[Table, list[Record]]:
    """The batch's records per table, each list in batch order; TypeError for a non-record (a bug:
    no retry can fix it, so not a SinkError)."""
    lists: dict[str, list[Record]] = {}
    try:
        for record in batch:
            try:
                lists[record.KIND].append(record)  # the common case: one lookup, one append
            except KeyError:
                if record.KIND not in BY_KIND:
                    raise TypeError(f"{store} cannot store {record!r}") from None
                lists[record.KIND] = [record]
    except AttributeError:
        raise TypeError(f"{store} cannot store {record!r}") from None
    return {BY_KIND[kind]: records for kind, records in lists.items()}
