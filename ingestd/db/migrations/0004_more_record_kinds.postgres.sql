-- The other feed families' tables on plain PostgreSQL, partitioned by UTC day like 0002 (which
-- explains the choices), and the market-data runbook's derived price metrics as views over `prices`.
--
-- Columns are declared for both SQL sinks in ingestd/sinks/tables.py (the SQLite sink mirrors these
-- names); each natural key is the one documented on its record in ingestd/model.py, with `ts`
-- appended where it is not part of it already, as partitioning requires (`ts` is the venue's own time
-- of the record and never changes for a given key, so the natural key still holds).
-- The maintenance job (ingestd.db.maintenance) creates and drops these tables' day partitions too.

-- When ingestd received each record, as ticks and books already have it.
ALTER TABLE derivatives ADD COLUMN IF NOT EXISTS recv_ts timestamptz;
ALTER TABLE dex_metrics ADD COLUMN IF NOT EXISTS recv_ts timestamptz;
ALTER TABLE onchain_flows ADD COLUMN IF NOT EXISTS recv_ts timestamptz;

COMMENT ON COLUMN dex_metrics.liquidity IS 'Uniswap v3 pool liquidity, a uint128, exact';
COMMENT ON COLUMN onchain_flows.amount IS
    'Transfer amount scaled by the token''s decimals (1.5 USDC is 1.5, not 1500000), exact';

CREATE TABLE IF NOT EXISTS prices (
    ts                   timestamptz      NOT NULL,  -- the aggregator's last_updated
    source               text             NOT NULL,  -- 'coingecko'
    coin_id              text             NOT NULL,  -- the aggregator's id: 'bitcoin'
    symbol               text,                       -- upper-case ticker: 'BTC'
    price_usd            double precision,
    market_cap           double precision,
    market_cap_rank      integer,
    total_volume         double precision,
    high_24h             double precision,
    low_24h              double precision,
    price_change_24h     double precision,
    price_change_pct_24h double precision,           -- percent: -0.18 is -0.18 %
    circulating_supply   double precision,
    recv_ts              timestamptz,
    PRIMARY KEY (source, coin_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS prediction_books (
    ts        timestamptz      NOT NULL,
    venue     text             NOT NULL,  -- 'polymarket'
    market    text,                       -- condition id
    asset_id  text             NOT NULL,  -- outcome token id (a uint256 as decimal digits)
    book_hash text             NOT NULL,
    best_bid  double precision,
    best_ask  double precision,
    bids      jsonb,                      -- [[price, size], ...], best first
    asks      jsonb,
    recv_ts   timestamptz,
    PRIMARY KEY (venue, asset_id, ts, book_hash)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS prediction_trades (
    ts           timestamptz      NOT NULL,
    venue        text             NOT NULL,
    market       text,
    asset_id     text             NOT NULL,
    price        double precision,
    size         double precision,
    side         text,                       -- taker side: 'buy' or 'sell'
    tx_hash      text             NOT NULL,
    fee_rate_bps double precision,
    recv_ts      timestamptz,
    PRIMARY KEY (venue, asset_id, tx_hash, ts)
) PARTITION BY RANGE (ts);

-- The legacy service's whale_activity trade events, one row per (transaction, outcome token, wallet).
CREATE TABLE IF NOT EXISTS whale_trades (
    ts             timestamptz      NOT NULL,  -- trade time (the event's "timestamp")
    trade_id       text             NOT NULL,  -- transaction hash
    trader_address text             NOT NULL,  -- lowercase 0x hex
    market_id      text,                       -- condition id
    token_id       text             NOT NULL,
    side           text,                       -- 'BUY' or 'SELL', as the legacy events spell it
    size           double precision,
    price          double precision,
    amount         double precision,           -- size * price, USDC
    detected_at    timestamptz,                -- when ingestd saw it
    pseudonym      text,
    title          text,
    outcome        text,
    PRIMARY KEY (trade_id, token_id, trader_address, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX IF NOT EXISTS prices_ts_brin ON prices USING brin (ts);
CREATE INDEX IF NOT EXISTS prediction_books_ts_brin ON prediction_books USING brin (ts);
CREATE INDEX IF NOT EXISTS prediction_trades_ts_brin ON prediction_trades USING brin (ts);
CREATE INDEX IF NOT EXISTS whale_trades_ts_brin ON whale_trades USING brin (ts);
-- "Everything this wallet did": the key starts with the transaction, not the wallet.
CREATE INDEX IF NOT EXISTS whale_trades_trader ON whale_trades (trader_address, ts);

-- ==== derived price metrics (the market-data runbook: volatility, aggregates, comparisons, ROI) ====
-- The same views are in 0004_more_record_kinds.timescale.sql. Times are UTC; now() is read when a
-- view is queried. Divisions go through NULLIF(..., 0): float division by zero is an error here.
--
--   SELECT * FROM price_latest;                               -- one row per coin, at most a day old
--   SELECT * FROM price_volatility WHERE coin_id = 'bitcoin';
--   SELECT * FROM price_daily WHERE coin_id = 'ethereum' AND day >= current_date - 30;
--   SELECT * FROM price_comparisons ORDER BY market_cap_rank;
--   SELECT * FROM price_roi ORDER BY roi_7d DESC NULLS LAST;

-- The latest sample of each coin, among those of the last day (a coin the poller stopped
-- reporting drops out rather than showing a stale price as current).
CREATE OR REPLACE VIEW price_latest AS
SELECT DISTINCT ON (source, coin_id)
       source, coin_id, symbol, ts, price_usd, market_cap, market_cap_rank, total_volume, high_24h, low_24h,
       price_change_24h, price_change_pct_24h, circulating_supply
FROM prices
WHERE ts >= now() - INTERVAL '1 day'
ORDER BY source, coin_id, ts DESC;

-- Volatility: the sample standard deviation of log returns between consecutive samples over the
-- last 24 h, 7 and 30 days, as is, and annualized by the square root of samples per year
-- (365.25 days over the average spacing of the samples in that window), so that series polled at
-- different intervals compare. NULL until a window holds two returns.
CREATE OR REPLACE VIEW price_volatility AS
WITH returns AS (
    SELECT source, coin_id, symbol, ts,
           ln(price_usd / NULLIF(lag(price_usd) OVER w, 0)) AS log_return,
           extract(epoch FROM ts - lag(ts) OVER w)::double precision AS spacing_s
    FROM prices
    WHERE ts >= now() - INTERVAL '30 days' AND price_usd > 0
    WINDOW w AS (PARTITION BY source, coin_id ORDER BY ts)
)
SELECT source, coin_id,
       (array_agg(symbol ORDER BY ts DESC))[1] AS symbol,
       max(ts) AS ts,
       count(log_return) FILTER (WHERE ts >= now() - INTERVAL '1 day') AS returns_24h,
       stddev_samp(log_return) FILTER (WHERE ts >= now() - INTERVAL '1 day') AS volatility_24h,
       stddev_samp(log_return) FILTER (WHERE ts >= now() - INTERVAL '7 days') AS volatility_7d,
       stddev_samp(log_return) AS volatility_30d,
       stddev_samp(log_return) FILTER (WHERE ts >= now() - INTERVAL '1 day')
           * sqrt(31557600.0 / NULLIF(avg(spacing_s) FILTER (WHERE ts >= now() - INTERVAL '1 day'), 0))
           AS volatility_24h_annualized,
       stddev_samp(log_return) FILTER (WHERE ts >= now() - INTERVAL '7 days')
           * sqrt(31557600.0 / NULLIF(avg(spacing_s) FILTER (WHERE ts >= now() - INTERVAL '7 days'), 0))
           AS volatility_7d_annualized,
       stddev_samp(log_return) * sqrt(31557600.0 / NULLIF(avg(spacing_s), 0)) AS volatility_30d_annualized
FROM returns
GROUP BY source, coin_id;

-- Aggregates: one row per coin and UTC day, open/high/low/close and the mean of the sampled
-- prices, with the day's last market cap and 24 h volume. Filter on `day` to read a range.
CREATE OR REPLACE VIEW price_daily AS
SELECT source, coin_id,
       (ts AT TIME ZONE 'UTC')::date AS day,
       (array_agg(symbol ORDER BY ts DESC))[1] AS symbol,
       (array_agg(price_usd ORDER BY ts))[1] AS open,
       max(price_usd) AS high,
       min(price_usd) AS low,
       (array_agg(price_usd ORDER BY ts DESC))[1] AS close,
       avg(price_usd) AS mean,
       count(*) AS samples,
       (array_agg(market_cap ORDER BY ts DESC))[1] AS market_cap,
       (array_agg(total_volume ORDER BY ts DESC))[1] AS total_volume
FROM prices
GROUP BY source, coin_id, (ts AT TIME ZONE 'UTC')::date;

-- Comparisons: each coin's latest sample against the market (its share of the total market cap of
-- the coins followed) and against bitcoin (price in BTC, 24 h change relative to BTC's, in
-- percentage points), and its rank by 24 h change.
CREATE OR REPLACE VIEW price_comparisons AS
SELECT l.source, l.coin_id, l.symbol, l.ts, l.price_usd, l.market_cap, l.market_cap_rank,
       l.market_cap / NULLIF(sum(l.market_cap) OVER (PARTITION BY l.source), 0) AS market_cap_share,
       l.price_change_pct_24h,
       rank() OVER (PARTITION BY l.source ORDER BY l.price_change_pct_24h DESC NULLS LAST) AS change_rank_24h,
       l.price_usd / NULLIF(btc.price_usd, 0) AS price_btc,
       l.price_change_pct_24h - btc.price_change_pct_24h AS change_vs_btc_pct_24h
FROM price_latest l
LEFT JOIN price_latest btc ON btc.source = l.source AND btc.coin_id = 'bitcoin';

-- ROI: the latest price over the price a window earlier (the last sample at or before that time),
-- minus one: 0.05 is +5 %. NULL when the history does not reach back that far.
CREATE OR REPLACE VIEW price_roi AS
SELECT l.source, l.coin_id, l.symbol, l.ts, l.price_usd,
       l.price_usd / NULLIF(d1.price_usd, 0) - 1 AS roi_24h,
       l.price_usd / NULLIF(d7.price_usd, 0) - 1 AS roi_7d,
       l.price_usd / NULLIF(d30.price_usd, 0) - 1 AS roi_30d,
       l.price_usd / NULLIF(d90.price_usd, 0) - 1 AS roi_90d,
       l.price_usd / NULLIF(d365.price_usd, 0) - 1 AS roi_365d
FROM price_latest l
LEFT JOIN LATERAL (SELECT p.price_usd FROM prices p WHERE p.source = l.source AND p.coin_id = l.coin_id
                   AND p.ts <= l.ts - INTERVAL '1 day' ORDER BY p.ts DESC LIMIT 1) d1 ON TRUE
LEFT JOIN LATERAL (SELECT p.price_usd FROM prices p WHERE p.source = l.source AND p.coin_id = l.coin_id
                   AND p.ts <= l.ts - INTERVAL '7 days' ORDER BY p.ts DESC LIMIT 1) d7 ON TRUE
LEFT JOIN LATERAL (SELECT p.price_usd FROM prices p WHERE p.source = l.source AND p.coin_id = l.coin_id
                   AND p.ts <= l.ts - INTERVAL '30 days' ORDER BY p.ts DESC LIMIT 1) d30 ON TRUE
LEFT JOIN LATERAL (SELECT p.price_usd FROM prices p WHERE p.source = l.source AND p.coin_id = l.coin_id
                   AND p.ts <= l.ts - INTERVAL '90 days' ORDER BY p.ts DESC LIMIT 1) d90 ON TRUE
LEFT JOIN LATERAL (SELECT p.price_usd FROM prices p WHERE p.source = l.source AND p.coin_id = l.coin_id
                   AND p.ts <= l.ts - INTERVAL '365 days' ORDER BY p.ts DESC LIMIT 1) d365 ON TRUE;
