"""The embedded sink: one SQLite file, tables named as the legacy service's (`assets`, `ticks`, `books`)
and as the PostgreSQL sink's for every other record kind (`derivatives`, `dex_metrics`, `onchain_flows`,
`prices`, `prediction_books`, `prediction_trades`, `whale_trades`: see ingestd/sinks/tables.py, which
declares their columns for both sinks), with the PostgreSQL schema's price views over `prices`
(`price_latest`, `price_volatility`, `price_daily`, `price_comparisons`, `price_roi`; `_SCHEMA_V3`
lists where SQLite's differ).

Durability: the database runs in WAL mode with `synchronous=NORMAL` unless told otherwise. A commit
then writes the WAL without fsync, so every committed batch survives a crash or `kill -9` of the
process (the WAL is in the OS page cache), while a power loss or kernel crash may roll back the last
few transactions (never corrupt the file). That is safe here because `Checkpoint` records commit in the
same transaction as the trades they cover: whatever is lost is lost together with its checkpoint, and
resume refetches it from the venue. `synchronous="full"` fsyncs every commit, for stores that cannot be
refetched, at a cost in batches per second.

Concurrency: WAL lets other processes (the console, `sqlite3` on the command line, a notebook) read
while the daemon writes; readers see whole batches only. Writers take the lock with `BEGIN IMMEDIATE`
so a second writing process waits for `busy_timeout` instead of failing on a lock upgrade.

Speed, and the GIL: the worker thread shares the GIL with the trio thread, which is busy decoding at
high rates. sqlite3 releases the GIL around every `sqlite3_step`, and taking it back from a busy
thread can take the whole switch interval (5 ms), so `executemany`, one step per row, fell from
~420k rows/s alone to ~6k beside a busy thread (bench/sqlite_sink.py). Rows therefore go in multi-row
`INSERT ... VALUES (...), (...), ...` statements of up to 2048 rows bound from one flat list: a
batch costs a handful of GIL round trips, and SQLite does the inserting with the GIL released, on
the other core. A batch is one transaction; duplicates on the natural key are skipped by
`INSERT OR IGNORE`, so a retried or replayed batch neither aborts nor double-stores.

Values SQLite cannot hold (text with a lone surrogate, integers beyond 64 bits, a type sqlite3
cannot bind): the batch is tried as is, and when binding fails on such a value every record is
screened (`ingestd.sinks.tables.refusal_reason`), the offending ones are refused (logged with the
reason, counted in `sink.<name>.records_refused`) and the rest is written. NUL characters, quotes,
backslashes and any valid Unicode are stored verbatim (values are always bound, never spliced into
SQL). A float NaN is stored as NULL: SQLite has no NaN.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import msgspec

from ingestd.model import BookTop, Checkpoint, Record, Trade
from ingestd.sinks import tables
from ingestd.sinks.base import Sink, SinkError
from ingestd.stats import StatsRegistry, now_us

logger = logging.getLogger("ingestd.sinks.sqlite")

# Long enough to ride out another writer's transaction or a WAL checkpoint; short enough that a
# lock held for good surfaces as a SinkError (and a logged retry) instead of a silent stall.
BUSY_TIMEOUT_S = 5.0

_SYNCHRONOUS_LEVELS = ("off", "normal", "full", "extra")

# --- schema ------------------------------------------------------------------------------------
# `PRAGMA user_version` is the schema version. _MIGRATIONS[i] moves a database from version i to
# i + 1; a later release appends a step and never edits a shipped one.

_SCHEMA_V1 = (
    """
    CREATE TABLE IF NOT EXISTS assets (
        asset_id  INTEGER PRIMARY KEY,
        symbol    TEXT NOT NULL UNIQUE,
        chain     TEXT,
        address   TEXT,
        sector    TEXT,
        risk_tags TEXT  -- JSON array, e.g. '["mid-cap"]' (a TEXT[] in the legacy PostgreSQL schema)
    )
    """,
    # Only the key columns are NOT NULL: SQLite stores a float NaN as NULL, and one odd price must
    # not make a whole batch fail forever.
    """
    CREATE TABLE IF NOT EXISTS ticks (
        venue    TEXT    NOT NULL,
        symbol   TEXT    NOT NULL,
        trade_id INTEGER NOT NULL,
        ts       INTEGER,  -- exchange time, microseconds since the Unix epoch (UTC)
        price    REAL,
        qty      REAL,
        side     TEXT,     -- taker side: 'buy' or 'sell'
        recv_ts  INTEGER,  -- when ingestd received it, microseconds since the Unix epoch (UTC)
        asset_id INTEGER REFERENCES assets (asset_id),
        PRIMARY KEY (venue, symbol, trade_id)
    ) WITHOUT ROWID
    """,
    # A rowid table, unlike `ticks`: SQLite advises WITHOUT ROWID only for rows under ~1/20 of a
    # page, and a book row carries its levels as JSON.
    """
    CREATE TABLE IF NOT EXISTS books (
        venue      TEXT    NOT NULL,
        symbol     TEXT    NOT NULL,
        update_id  INTEGER NOT NULL,
        ts         INTEGER,
        recv_ts    INTEGER,
        bid_px     REAL,
        bid_sz     REAL,
        ask_px     REAL,
        ask_sz     REAL,
        spread_bps REAL,
        bids       TEXT,  -- JSON [[price, size], ...], best first
        asks       TEXT,
        asset_id   INTEGER REFERENCES assets (asset_id),
        PRIMARY KEY (venue, symbol, update_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS checkpoints (
        venue      TEXT    NOT NULL,
        symbol     TEXT    NOT NULL,
        trade_id   INTEGER NOT NULL,  -- every trade with id <= trade_id is stored
        updated_ts INTEGER NOT NULL,
        PRIMARY KEY (venue, symbol)
    ) WITHOUT ROWID
    """,
    # Views for people: ISO 8601 UTC with milliseconds, receive lag in ms.
    """
    CREATE VIEW IF NOT EXISTS ticks_readable AS
    SELECT venue, symbol, trade_id,
           strftime('%Y-%m-%dT%H:%M:%fZ', ts / 1e6, 'unixepoch') AS time_utc,
           price, qty, side,
           (recv_ts - ts) / 1000.0 AS recv_lag_ms,
           asset_id
    FROM ticks
    """,
    """
    CREATE VIEW IF NOT EXISTS books_readable AS
    SELECT venue, symbol, update_id,
           strftime('%Y-%m-%dT%H:%M:%fZ', ts / 1e6, 'unixepoch') AS time_utc,
           bid_px, bid_sz, ask_px, ask_sz, spread_bps,
           (recv_ts - ts) / 1000.0 AS recv_lag_ms,
           asset_id
    FROM books
    """,
)

# v2: the other feed families' record kinds, with the PostgreSQL sink's table and column names
# (declared in ingestd/sinks/tables.py; a test checks the two agree). Times are INTEGER µs since the
# Unix epoch (UTC), as in v1. uint128/uint256 quantities (`dex_metrics.liquidity`,
# `onchain_flows.amount`) are TEXT decimal strings: SQLite's INTEGER stops at 2^63 and REAL keeps 53
# bits, so any numeric type would round them; exactness matters more here than arithmetic in SQL
# (cast to REAL in a query when an approximation will do). Order book levels are JSON text.
# WITHOUT ROWID only where rows are small (see the note on `books` above).
_SCHEMA_V2 = (
    """
    CREATE TABLE IF NOT EXISTS derivatives (
        ts                  INTEGER NOT NULL,  -- venue time of the sample
        venue               TEXT    NOT NULL,
        symbol              TEXT    NOT NULL,
        funding_rate        REAL,
        next_funding_time   INTEGER,
        open_interest       REAL,              -- contracts
        open_interest_value REAL,              -- quote currency
        mark_price          REAL,
        index_price         REAL,
        basis               REAL,
        recv_ts             INTEGER,
        PRIMARY KEY (venue, symbol, ts)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS dex_metrics (
        ts             INTEGER NOT NULL,  -- when the pool was read
        chain          TEXT    NOT NULL,
        pool_address   TEXT    NOT NULL,
        tvl_usd        REAL,
        volume_24h_usd REAL,
        liquidity      TEXT,              -- uint128 as decimal digits, exact (see above)
        price          REAL,              -- token1 per token0
        depth_2pct_usd REAL,
        recv_ts        INTEGER,
        PRIMARY KEY (chain, pool_address, ts)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS onchain_flows (
        ts           INTEGER NOT NULL,  -- block time
        chain        TEXT    NOT NULL,
        block_number INTEGER,
        block_hash   TEXT    NOT NULL,
        tx_hash      TEXT,
        log_index    INTEGER NOT NULL,
        token        TEXT,
        from_addr    TEXT,
        to_addr      TEXT,
        amount       TEXT,              -- exact decimal scaled by the token's decimals, e.g. '1234.5' (see above)
        from_tag     TEXT,
        to_tag       TEXT,
        recv_ts      INTEGER,
        PRIMARY KEY (chain, block_hash, log_index)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS prices (
        ts                   INTEGER NOT NULL,  -- the aggregator's last_updated
        source               TEXT    NOT NULL,
        coin_id              TEXT    NOT NULL,
        symbol               TEXT,
        price_usd            REAL,
        market_cap           REAL,
        market_cap_rank      INTEGER,
        total_volume         REAL,
        high_24h             REAL,
        low_24h              REAL,
        price_change_24h     REAL,
        price_change_pct_24h REAL,
        circulating_supply   REAL,
        recv_ts              INTEGER,
        PRIMARY KEY (source, coin_id, ts)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS prediction_books (
        ts        INTEGER NOT NULL,
        venue     TEXT    NOT NULL,
        market    TEXT,              -- condition id
        asset_id  TEXT    NOT NULL,  -- outcome token id (a uint256 as decimal digits)
        book_hash TEXT    NOT NULL,
        best_bid  REAL,
        best_ask  REAL,
        bids      TEXT,              -- JSON [[price, size], ...], best first
        asks      TEXT,
        recv_ts   INTEGER,
        PRIMARY KEY (venue, asset_id, ts, book_hash)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS prediction_trades (
        ts           INTEGER NOT NULL,
        venue        TEXT    NOT NULL,
        market       TEXT,
        asset_id     TEXT    NOT NULL,
        price        REAL,
        size         REAL,
        side         TEXT,              -- taker side: 'buy' or 'sell'
        tx_hash      TEXT    NOT NULL,
        fee_rate_bps REAL,
        recv_ts      INTEGER,
        PRIMARY KEY (venue, asset_id, tx_hash, ts)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS whale_trades (
        ts             INTEGER NOT NULL,  -- trade time
        trade_id       TEXT    NOT NULL,  -- transaction hash
        trader_address TEXT    NOT NULL,
        market_id      TEXT,
        token_id       TEXT    NOT NULL,
        side           TEXT,              -- 'BUY' or 'SELL', as the legacy events spell it
        size           REAL,
        price          REAL,
        amount         REAL,              -- size * price, USDC
        detected_at    INTEGER,           -- when ingestd saw it
        pseudonym      TEXT,
        title          TEXT,
        outcome        TEXT,
        PRIMARY KEY (trade_id, token_id, trader_address)
    )
    """,
)

# v3: the market-data runbook's derived price metrics as views over `prices`, with the names, columns
# and meaning of PostgreSQL's (ingestd/db/migrations/0004_more_record_kinds.postgres.sql explains each
# one; tests/integration/test_postgres_sink_kinds.py checks that both stores' views agree on the same
# data). What differs, and why:
# - Times are INTEGER µs, as in every table here; `price_daily.day` is TEXT 'YYYY-MM-DD' (SQLite has
#   no date type; the strings sort and compare as dates: `WHERE day >= date('now', '-30 days')`).
# - "Now" is the system clock to the millisecond (SQLite's 'now' has no finer grain), read in the
#   `clock` CTE; SQLite keeps it fixed while a statement step runs, as PostgreSQL keeps now() for a
#   transaction. A day is 86 400 s, 7 days 604 800 s and so on, as PostgreSQL's intervals are in a
#   UTC session (in another time zone PostgreSQL's '1 day' can be 23 or 25 hours across DST).
# - SQLite has no stddev_samp. The volatilities take two passes: each window's mean log return first
#   (a window function), then the sum of squared deviations from it over n - 1. That is the sample
#   standard deviation stddev_samp computes, to rounding; the one-pass sqrt(avg(x²) - avg(x)²) would
#   lose the digits that matter whenever the returns' spread is small beside their mean.
# - ln() and sqrt() are SQLite's math functions (3.35+, present where SQLite was compiled with
#   SQLITE_ENABLE_MATH_FUNCTIONS, the default of its configure script and of the sqlite3 shell).
#   Without them only `price_volatility` fails, when queried ("no such function: ln"); the other
#   views, and the sink, do not use them.
# - Nothing newer than SQLite 3.25's window functions appears here, since a syntax error would keep
#   the sink from opening on an older library: CASE inside an aggregate instead of FILTER, and no
#   NULLS LAST (SQLite sorts NULLs last in a DESC order, which is PostgreSQL's DESC NULLS LAST).
# - PostgreSQL's LATERAL joins are correlated subqueries here, each one a lookup on the primary key.
# - Division by zero gives NULL in SQLite rather than an error; the NULLIFs are kept for parity.
# - A NaN price is stored as NULL (SQLite has no NaN), so it drops out of every metric; in PostgreSQL,
#   where NaN is stored and sorts above every number, it passes `price_usd > 0` and turns results NaN.
# `prices_ts` serves the views' "last day / 30 days" filters, as PostgreSQL's BRIN index on `ts`
# does; prices arrive one poll at a time, so it costs next to nothing.
# The statements are literal text, like every shipped step: a later edit must not change them.
_SCHEMA_V3 = (
    "CREATE INDEX IF NOT EXISTS prices_ts ON prices (ts)",
    # The latest sample of each coin, among those of the last day.
    """
    CREATE VIEW IF NOT EXISTS price_latest AS
    WITH clock AS (SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000 AS now_us),
    ranked AS (
        SELECT p.*, row_number() OVER (PARTITION BY source, coin_id ORDER BY ts DESC) AS recency
        FROM prices AS p, clock
        WHERE ts >= now_us - 86400000000
    )
    SELECT source, coin_id, symbol, ts, price_usd, market_cap, market_cap_rank, total_volume, high_24h,
           low_24h, price_change_24h, price_change_pct_24h, circulating_supply
    FROM ranked
    WHERE recency = 1
    """,
    # Volatility: the sample standard deviation of log returns between consecutive samples over the
    # last 24 h, 7 and 30 days, as is and annualized (31 557 600 s a year over the mean spacing of
    # the window's samples). NULL until a window holds two returns.
    """
    CREATE VIEW IF NOT EXISTS price_volatility AS
    WITH clock AS (SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000 AS now_us),
    returns AS (
        SELECT source, coin_id, ts,
               first_value(symbol) OVER (PARTITION BY source, coin_id ORDER BY ts DESC) AS latest_symbol,
               ln(price_usd / NULLIF(lag(price_usd) OVER w, 0)) AS log_return,
               (ts - lag(ts) OVER w) / 1e6 AS spacing_s,
               ts >= now_us - 86400000000 AS in_24h,
               ts >= now_us - 604800000000 AS in_7d
        FROM prices, clock
        WHERE ts >= now_us - 2592000000000 AND price_usd > 0
        WINDOW w AS (PARTITION BY source, coin_id ORDER BY ts)
    ),
    deviations AS (
        SELECT source, coin_id, ts, latest_symbol, log_return, spacing_s, in_24h, in_7d,
               log_return - avg(CASE WHEN in_24h THEN log_return END) OVER coin AS dev_24h,
               log_return - avg(CASE WHEN in_7d THEN log_return END) OVER coin AS dev_7d,
               log_return - avg(log_return) OVER coin AS dev_30d
        FROM returns
        WINDOW coin AS (PARTITION BY source, coin_id)
    ),
    sums AS (
        SELECT source, coin_id, max(latest_symbol) AS symbol, max(ts) AS ts,
               count(CASE WHEN in_24h THEN log_return END) AS returns_24h,
               count(CASE WHEN in_7d THEN log_return END) AS returns_7d,
               count(log_return) AS returns_30d,
               sum(CASE WHEN in_24h THEN dev_24h * dev_24h END) AS squares_24h,
               sum(CASE WHEN in_7d THEN dev_7d * dev_7d END) AS squares_7d,
               sum(dev_30d * dev_30d) AS squares_30d,
               avg(CASE WHEN in_24h THEN spacing_s END) AS spacing_24h,
               avg(CASE WHEN in_7d THEN spacing_s END) AS spacing_7d,
               avg(spacing_s) AS spacing_30d
        FROM deviations
        GROUP BY source, coin_id
    ),
    volatilities AS (
        SELECT source, coin_id, symbol, ts, returns_24h, spacing_24h, spacing_7d, spacing_30d,
               sqrt(squares_24h / NULLIF(returns_24h - 1, 0)) AS volatility_24h,
               sqrt(squares_7d / NULLIF(returns_7d - 1, 0)) AS volatility_7d,
               sqrt(squares_30d / NULLIF(returns_30d - 1, 0)) AS volatility_30d
        FROM sums
    )
    SELECT source, coin_id, symbol, ts, returns_24h, volatility_24h, volatility_7d, volatility_30d,
           volatility_24h * sqrt(31557600.0 / NULLIF(spacing_24h, 0)) AS volatility_24h_annualized,
           volatility_7d * sqrt(31557600.0 / NULLIF(spacing_7d, 0)) AS volatility_7d_annualized,
           volatility_30d * sqrt(31557600.0 / NULLIF(spacing_30d, 0)) AS volatility_30d_annualized
    FROM volatilities
    """,
    # Aggregates: one row per coin and UTC day. The day is floored, not truncated toward zero, for
    # times before 1970 too; integer seconds keep a sample at 23:59:59.999999 in its day (date() of
    # fractional seconds would round it to the next one).
    """
    CREATE VIEW IF NOT EXISTS price_daily AS
    WITH days AS (
        SELECT source, coin_id, ts, symbol, price_usd, market_cap, total_volume,
               date(ts / 1000000 - (ts % 1000000 < 0), 'unixepoch') AS day
        FROM prices
    ),
    firsts AS (
        SELECT source, coin_id, day, price_usd,
               first_value(symbol) OVER latest AS symbol,
               first_value(price_usd) OVER earliest AS open,
               first_value(price_usd) OVER latest AS close,
               first_value(market_cap) OVER latest AS market_cap,
               first_value(total_volume) OVER latest AS total_volume
        FROM days
        WINDOW earliest AS (PARTITION BY source, coin_id, day ORDER BY ts),
               latest AS (PARTITION BY source, coin_id, day ORDER BY ts DESC)
    )
    SELECT source, coin_id, day, max(symbol) AS symbol, max(open) AS open, max(price_usd) AS high,
           min(price_usd) AS low, max(close) AS close, avg(price_usd) AS mean, count(*) AS samples,
           max(market_cap) AS market_cap, max(total_volume) AS total_volume
    FROM firsts
    GROUP BY source, coin_id, day
    """,
    # Comparisons: each coin's latest sample against the market and against bitcoin, and its rank by
    # 24 h change (DESC puts NULLs last in SQLite, as DESC NULLS LAST does in PostgreSQL).
    """
    CREATE VIEW IF NOT EXISTS price_comparisons AS
    SELECT l.source, l.coin_id, l.symbol, l.ts, l.price_usd, l.market_cap, l.market_cap_rank,
           l.market_cap / NULLIF(sum(l.market_cap) OVER (PARTITION BY l.source), 0) AS market_cap_share,
           l.price_change_pct_24h,
           rank() OVER (PARTITION BY l.source ORDER BY l.price_change_pct_24h DESC) AS change_rank_24h,
           l.price_usd / NULLIF(btc.price_usd, 0) AS price_btc,
           l.price_change_pct_24h - btc.price_change_pct_24h AS change_vs_btc_pct_24h
    FROM price_latest AS l
    LEFT JOIN price_latest AS btc ON btc.source = l.source AND btc.coin_id = 'bitcoin'
    """,
    # ROI: the latest price over the last price at or before a window earlier, minus one.
    """
    CREATE VIEW IF NOT EXISTS price_roi AS
    SELECT l.source, l.coin_id, l.symbol, l.ts, l.price_usd,
           l.price_usd / NULLIF((SELECT p.price_usd FROM prices AS p WHERE p.source = l.source
                                 AND p.coin_id = l.coin_id AND p.ts <= l.ts - 86400000000
                                 ORDER BY p.ts DESC LIMIT 1), 0) - 1 AS roi_24h,
           l.price_usd / NULLIF((SELECT p.price_usd FROM prices AS p WHERE p.source = l.source
                                 AND p.coin_id = l.coin_id AND p.ts <= l.ts - 604800000000
                                 ORDER BY p.ts DESC LIMIT 1), 0) - 1 AS roi_7d,
           l.price_usd / NULLIF((SELECT p.price_usd FROM prices AS p WHERE p.source = l.source
                                 AND p.coin_id = l.coin_id AND p.ts <= l.ts - 2592000000000
                                 ORDER BY p.ts DESC LIMIT 1), 0) - 1 AS roi_30d,
           l.price_usd / NULLIF((SELECT p.price_usd FROM prices AS p WHERE p.source = l.source
                                 AND p.coin_id = l.coin_id AND p.ts <= l.ts - 7776000000000
                                 ORDER BY p.ts DESC LIMIT 1), 0) - 1 AS roi_90d,
           l.price_usd / NULLIF((SELECT p.price_usd FROM prices AS p WHERE p.source = l.source
                                 AND p.coin_id = l.coin_id AND p.ts <= l.ts - 31536000000000
                                 ORDER BY p.ts DESC LIMIT 1), 0) - 1 AS roi_365d
    FROM price_latest AS l
    """,
)

# The runbook's data-quality checks, as PostgreSQL's migration 0003 has them, over the last hour of
# `ticks`, partitioned by (venue, symbol). Differences: times are integer µs, so `gap` is a number of
# µs (an interval in PostgreSQL); "now" is read to the millisecond, as in `price_latest`; and with no
# index on `ts` (one would tax every insert of the hot path) each query scans `ticks`, which is
# fine for a person at a shell and the reason these are views, not something the daemon polls.
_SCHEMA_V4 = (
    """
    CREATE VIEW IF NOT EXISTS dq_tick_gaps AS
    WITH clock AS (SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000 AS now_us)
    SELECT venue, symbol, asset_id, ts, next_ts, next_ts - ts AS gap
    FROM (
        SELECT venue, symbol, asset_id, ts,
               lead(ts) OVER (PARTITION BY venue, symbol ORDER BY ts, trade_id) AS next_ts
        FROM ticks
        WHERE ts >= (SELECT now_us FROM clock) - 3600000000
    ) AS t
    WHERE next_ts IS NOT NULL
    ORDER BY gap DESC, venue, symbol, ts
    """,
    """
    CREATE VIEW IF NOT EXISTS dq_price_outliers AS
    WITH clock AS (SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000 AS now_us)
    SELECT venue, symbol, asset_id, ts, trade_id, price, prev_price, price / prev_price - 1.0 AS change
    FROM (
        SELECT venue, symbol, asset_id, ts, trade_id, price,
               lag(price) OVER (PARTITION BY venue, symbol ORDER BY ts, trade_id) AS prev_price
        FROM ticks
        WHERE ts >= (SELECT now_us FROM clock) - 3600000000
    ) AS t
    WHERE price > prev_price * 1.1 OR price < prev_price * 0.9
    ORDER BY ts DESC, venue, symbol, trade_id DESC
    """,
)

_MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4)
SCHEMA_VERSION = len(_MIGRATIONS)

# Rows per INSERT, at most. Measured with 5000-row batches beside a thread spinning on the GIL
# (alone, all sizes do ~490k rows/s): 1024 -> 100k rows/s, 2048 -> 120k, 4096 -> 140k; but the
# prepared statements of every size up to the cap cost ~8, ~14 and ~28 MB. A remainder is rounded up
# to a power of two (see _MultiRowInsert), so at most 12 sizes per table are ever prepared.
MAX_ROWS_PER_STATEMENT = 2048


class _MultiRowInsert:
    """`head VALUES (?, ...), (?, ...), ... tail`, executed with one flat list of row values."""

    def __init__(self, head: str, width: int, tail: str = "") -> None:
        self.head = head
        self.width = width  # values per row
        self.tail = tail
        self._sql: dict[int, str] = {}  # rows -> statement text

    def execute(self, conn: sqlite3.Connection, values: list) -> int:
        """Insert every row; returns how many rows SQLite reports changed."""
        width = self.width
        # Builds may lower SQLITE_MAX_VARIABLE_NUMBER (32766 by default, 250000 in Debian's).
        fits = max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
        step = min(MAX_ROWS_PER_STATEMENT, 1 << (fits.bit_length() - 1)) * width
        changed = 0
        for start in range(0, len(values), step):
            chunk = values[start : start + step]
            rows = len(chunk) // width
            size = 1 << (rows - 1).bit_length()  # the next power of two
            if size > rows:
                # Pad with copies of the last row, which the statement's conflict clause turns into
                # no-ops: cheaper than preparing a statement for every remainder size (~1.7 µs a
                # row), and it bounds the prepared statements kept in sqlite3's cache.
                chunk += chunk[-width:] * (size - rows)
            changed += conn.execute(self._statement(size), chunk).rowcount
        return changed

    def _statement(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            row = "(" + ", ".join("?" * self.width) + ")"
            sql = self._sql[rows] = f"{self.head} VALUES {', '.join([row] * rows)}{self.tail}"
        return sql


_INSERT_TICKS = _MultiRowInsert(
    "INSERT OR IGNORE INTO ticks (venue, symbol, trade_id, ts, price, qty, side, recv_ts, asset_id)", 9
)
_INSERT_BOOKS = _MultiRowInsert(
    "INSERT OR IGNORE INTO books (venue, symbol, update_id, ts, recv_ts, bid_px, bid_sz, ask_px, ask_sz,"
    " spread_bps, bids, asks, asset_id)",
    13,
)
# A checkpoint only moves forward: a replayed old batch must not rewind resume.
_UPSERT_CHECKPOINTS = _MultiRowInsert(
    "INSERT INTO checkpoints (venue, symbol, trade_id, updated_ts)",
    4,
    " ON CONFLICT (venue, symbol) DO UPDATE SET trade_id = excluded.trade_id, updated_ts = excluded.updated_ts"
    " WHERE excluded.trade_id > checkpoints.trade_id",
)
_INSERT_ASSETS = _MultiRowInsert("INSERT OR IGNORE INTO assets (symbol)", 1)
# Every other kind, from its declaration (ingestd/sinks/tables.py).
_INSERT_GENERIC = {
    table: _MultiRowInsert(f"INSERT OR IGNORE INTO {table.name} ({', '.join(table.column_names)})",
                           len(table.columns))
    for table in tables.GENERIC
}

# What binding a value SQLite cannot hold raises: screen the batch and refuse the culprits.
# (sqlite3.ProgrammingError is "Error binding parameter": a type sqlite3 cannot bind.)
_MAYBE_BAD_VALUE = (UnicodeEncodeError, OverflowError, sqlite3.ProgrammingError, TypeError, ValueError)

# What SQLite can hold: NUL characters are fine; times are any 64-bit integer.
LIMITS = tables.Limits(store="SQLite", nul_in_text=True, time_range=(-(1 << 63), (1 << 63) - 1),
                       time_words="a 64-bit integer time")

DEFAULT_COUNTED = ("assets", "ticks", "books", "checkpoints")

_encode_json = msgspec.json.Encoder().encode
_decode_levels = msgspec.json.Decoder(list[tuple[float, float]]).decode


class SqliteSink(Sink):
    """Stores every record kind (ingestd.model) in one SQLite database file.

    The pipeline calls it from worker threads, one call at a time; a lock still guards the
    connection so the read helpers are safe to call from another thread while it runs.
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        synchronous: str = "normal",
        stats: StatsRegistry | None = None,
    ) -> None:
        level = synchronous.lower()
        if level not in _SYNCHRONOUS_LEVELS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS_LEVELS}, not {synchronous!r}")
        self.name = name
        self.path = Path(path)
        self.synchronous = level
        self._stats = stats
        self._rows_written = f"sink.{name}.rows_written"
        self._duplicates_skipped = f"sink.{name}.duplicates_skipped"
        self._batches = f"sink.{name}.batches"
        self._records_refused = f"sink.{name}.records_refused"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._asset_ids: dict[str, int] = {}  # symbol -> assets.asset_id, committed rows only

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path,
                    timeout=BUSY_TIMEOUT_S,  # sqlite3_busy_timeout
                    isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                    # trio's thread cache may run consecutive calls on different threads; the
                    # pipeline serializes them and self._lock guards the rest.
                    check_same_thread=False,
                )
            except (OSError, sqlite3.Error) as exc:
                raise SinkError(f"{self.name}: cannot open {self.path}: {exc}") from exc
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if mode != "wal":  # e.g. a file system without shared memory: readers would block us
                    logger.warning("sink %s: %s stays in journal_mode=%s, not WAL", self.name, self.path, mode)
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")  # validated in __init__
                _migrate(conn, self.path)
                self._asset_ids = dict(conn.execute("SELECT symbol, asset_id FROM assets"))
            except sqlite3.Error as exc:
                conn.close()
                raise SinkError(f"{self.name}: cannot prepare {self.path}: {exc}") from exc
            except BaseException:  # e.g. the schema is newer than this code: not retriable
                conn.close()
                raise
            self._conn = conn
        logger.info(
            "sink %s: opened %s (schema v%d, synchronous=%s)", self.name, self.path, SCHEMA_VERSION, self.synchronous
        )

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.execute("PRAGMA optimize")  # what SQLite recommends before closing
            except sqlite3.Error:
                pass
            try:
                conn.close()
            except sqlite3.Error as exc:
                logger.warning("sink %s: error while closing %s: %s", self.name, self.path, exc)

    # --- writing -------------------------------------------------------------------------------

    def write(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        groups = tables.group_by_table(batch, "SqliteSink")
        refused = 0
        with self._lock:
            conn = self._connection()
            try:
                try:
                    inserted, attempted = self._store(conn, groups)
                except _MAYBE_BAD_VALUE as exc:
                    # Slow path: some value may be unstorable. Screen every record, refuse the bad ones.
                    kept, refusals = tables.screen(batch, LIMITS)
                    if not refusals:
                        raise exc  # nothing wrong with the records: a bug, or a store error, not bad input
                    tables.log_refusals(logger, self.name, refusals)
                    refused = len(refusals)
                    inserted, attempted = self._store(conn, tables.group_by_table(kept, "SqliteSink"))
            except sqlite3.Error as exc:
                raise SinkError(f"{self.name}: write of {len(batch)} records to {self.path} failed: {exc}") from exc
        stats = self._stats
        if stats is not None:
            stats.incr(self._rows_written, inserted)
            stats.incr(self._duplicates_skipped, attempted - inserted)
            stats.incr(self._batches)
            if refused:
                stats.incr(self._records_refused, refused)

    def _store(self, conn: sqlite3.Connection, groups: dict[tables.Table, list]) -> tuple[int, int]:
        """Store the grouped records in one transaction; returns (data rows inserted, attempted)."""
        trades = groups.get(tables.TICKS, ())
        books = groups.get(tables.BOOKS, ())
        symbols = tables.asset_symbols(groups)
        if symbols:
            self._register_assets(conn, symbols)
        # Values are built before BEGIN so the write lock is held for SQLite work only.
        tick_values = self._tick_values(trades)
        book_values = self._book_values(books)
        generic_values = []
        attempted = len(trades) + len(books)
        for table, records in groups.items():
            insert = _INSERT_GENERIC.get(table)
            if insert is not None:
                values: list = []
                add = values.extend
                row = table.row
                for record in records:
                    add(row(record))
                generic_values.append((insert, values))
                attempted += len(records)
        checkpoint_values = _checkpoint_values(groups.get(tables.CHECKPOINTS, ()))
        inserted = _in_transaction(conn, _insert_rows, tick_values, book_values, generic_values, checkpoint_values)
        return inserted, attempted

    def _tick_values(self, trades: Sequence[Trade]) -> list:
        """Row values of `ticks`, flat (extend with a tuple is the fastest way to build it in CPython)."""
        values: list = []
        add = values.extend
        asset_id = self._asset_ids.__getitem__
        for t in trades:
            add((t.venue, t.symbol, t.trade_id, t.ts_us, t.price, t.qty, t.side, t.recv_us, asset_id(t.symbol)))
        return values

    def _book_values(self, books: Sequence[BookTop]) -> list:
        values: list = []
        add = values.extend
        asset_id = self._asset_ids.__getitem__
        for b in books:
            add(
                (
                    b.venue, b.symbol, b.update_id, b.ts_us, b.recv_us,
                    b.bid_px, b.bid_sz, b.ask_px, b.ask_sz, b.spread_bps,
                    _encode_json(b.bids).decode(), _encode_json(b.asks).decode(),
                    asset_id(b.symbol),
                )
            )
        return values

    def _register_assets(self, conn: sqlite3.Connection, symbols: set[str]) -> None:
        """Give every new symbol an `assets` row, in its own committed transaction.

        The symbols are those of trades, book tops and derivatives; why no other kind names an asset
        is in `tables.asset_symbols`. Separate from the batch transaction so the in-memory cache only
        ever holds committed ids: a rolled-back batch cannot leave behind an id that SQLite later
        hands to another symbol.
        """
        missing = [s for s in symbols if s not in self._asset_ids]
        if not missing:
            return
        found = _in_transaction(conn, _insert_assets, missing)
        self._asset_ids.update(found)

    # --- reading -------------------------------------------------------------------------------

    def resume_points(self, venue: str) -> dict[str, int]:
        return dict(self._query("SELECT symbol, trade_id FROM checkpoints WHERE venue = ?", (venue,)))

    def trade_ids(self, venue: str, symbol: str) -> list[int]:
        """Stored trade ids of one market, ascending."""
        rows = self._query(
            "SELECT trade_id FROM ticks WHERE venue = ? AND symbol = ? ORDER BY trade_id", (venue, symbol)
        )
        return [trade_id for (trade_id,) in rows]

    def counts(self, table_names: Sequence[str] = DEFAULT_COUNTED) -> dict[str, int]:
        """Rows per table (a full count: for tests, the demo and operators, not the hot path)."""
        for table in table_names:
            if table not in DEFAULT_COUNTED and table not in tables.BY_NAME:
                raise ValueError(f"no table {table!r}")
        return {table: self._query(f"SELECT count(*) FROM {table}")[0][0] for table in table_names}

    def records(self, kind: type) -> list:
        """Every stored record of a kind stored by declaration (Derivative, Price, ...), as records,
        in natural-key order."""
        table = tables.BY_KIND[kind.KIND]
        if table not in _INSERT_GENERIC:
            raise ValueError(f"{kind.__name__} is not read back generically")
        rows = self._query(
            f"SELECT {', '.join(table.column_names)} FROM {table.name} ORDER BY {', '.join(table.key)}"
        )
        return [table.record_from_row(row) for row in rows]

    def latest_book(self, venue: str, symbol: str) -> BookTop | None:
        """The stored book top with the highest update id, or None."""
        rows = self._query(
            "SELECT venue, symbol, update_id, ts, recv_ts, bid_px, bid_sz, ask_px, ask_sz, spread_bps, bids, asks"
            " FROM books WHERE venue = ? AND symbol = ? ORDER BY update_id DESC LIMIT 1",
            (venue, symbol),
        )
        if not rows:
            return None
        v, s, update_id, ts, recv_ts, bid_px, bid_sz, ask_px, ask_sz, spread, bids, asks = rows[0]
        return BookTop(
            venue=v, symbol=s, update_id=update_id, ts_us=ts, recv_us=recv_ts,
            bid_px=bid_px, bid_sz=bid_sz, ask_px=ask_px, ask_sz=ask_sz, spread_bps=spread,
            bids=_decode_levels(bids), asks=_decode_levels(asks),
        )

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise SinkError(f"{self.name}: query on {self.path} failed: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SinkError(f"{self.name}: sink is not open")
        return self._conn


# --- helpers (no state of their own) ------------------------------------------------------------


def _checkpoint_values(checkpoints: Sequence[Checkpoint]) -> list:
    """Flat upsert values, one row per market with the batch's highest trade id (one row per key
    also keeps a multi-row upsert from updating the same row twice)."""
    highest: dict[tuple[str, str], int] = {}
    for cp in checkpoints:
        key = (cp.venue, cp.symbol)
        highest[key] = max(cp.trade_id, highest.get(key, cp.trade_id))
    updated = now_us()
    values: list = []
    for (venue, symbol), trade_id in highest.items():
        values += (venue, symbol, trade_id, updated)
    return values


def _in_transaction(conn: sqlite3.Connection, work, *args):
    """Run `work(conn, *args)` inside BEGIN IMMEDIATE ... COMMIT; roll back on any exception.

    IMMEDIATE takes the write lock up front, so a concurrent writer makes us wait (busy_timeout)
    rather than fail on a read-to-write lock upgrade.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        # Rolling back on every exception, not only sqlite3.Error, keeps the connection usable:
        # a transaction left open would make every later BEGIN fail.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise
    return result


def _insert_rows(
    conn: sqlite3.Connection, tick_values: list, book_values: list, generic_values: list[tuple[_MultiRowInsert, list]],
    checkpoint_values: list,
) -> int:
    """Insert data rows and apply checkpoints; returns how many data rows were new."""
    inserted = _INSERT_TICKS.execute(conn, tick_values) + _INSERT_BOOKS.execute(conn, book_values)
    for insert, values in generic_values:
        inserted += insert.execute(conn, values)
    _UPSERT_CHECKPOINTS.execute(conn, checkpoint_values)
    return inserted


def _insert_assets(conn: sqlite3.Connection, symbols: list[str]) -> dict[str, int]:
    # OR IGNORE: another process (or an operator's INSERT) may have registered it meanwhile.
    _INSERT_ASSETS.execute(conn, symbols)
    wanted = set(symbols)
    return {s: asset_id for s, asset_id in conn.execute("SELECT symbol, asset_id FROM assets") if s in wanted}


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION; the version is read inside the write transaction so two
    processes opening a fresh file at once cannot both apply the same step."""

    def apply(conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} has schema v{version}, newer than this ingestd understands (v{SCHEMA_VERSION})"
            )
        for target, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")  # transactional: stored in the file header

    _in_transaction(conn, apply)
