-- Time-series tables on plain PostgreSQL: native declarative partitioning, one partition per UTC day.
--
-- Partitions are named <table>_pYYYYMMDD and created by the sink (ingestd.db.maintenance): a few
-- days ahead by the maintenance job, and on demand for any day a batch carries (a backfill). The
-- retention job drops whole partitions, which costs nothing like a DELETE of millions of rows
-- (no dead tuples, no VACUUM, no WAL per row). There is no DEFAULT partition: a row for a day
-- without a partition is an error the sink answers by creating it, never a row parked elsewhere
-- that would later block creating that day's partition.
--
-- Keys: PostgreSQL requires a unique index on a partitioned table to include the partition key,
-- so each natural key carries `ts` as its last column, exactly as TimescaleDB requires for
-- hypertables. The natural key still holds: `ts` is the venue's own time of that trade / book
-- update / block and never changes for a given key, so a retried or replayed record has the same
-- (key, ts), lands in the same partition, and conflicts there.
--
-- Prices and sizes are double precision: the feeds deliver IEEE doubles (model.Trade.price is a
-- float), which float8 stores bit-exactly in 8 fixed bytes with fast binary COPY; numeric would
-- only spell out the same binary value in decimal, bigger and slower. Token amounts (a uint256
-- scaled by the token's decimals) and pool liquidity (a uint128) are numeric: they must stay exact.

CREATE TABLE IF NOT EXISTS ticks (
    ts       timestamptz      NOT NULL,  -- exchange trade time
    venue    text             NOT NULL,
    symbol   text             NOT NULL,
    trade_id bigint           NOT NULL,
    price    double precision,
    qty      double precision,
    side     text,                       -- taker side: 'buy' or 'sell'
    recv_ts  timestamptz,                -- when ingestd received it
    asset_id integer,                    -- assets.asset_id; no FK, which would cost a lookup per inserted row
    PRIMARY KEY (venue, symbol, trade_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS books (
    ts         timestamptz      NOT NULL,  -- exchange time of the book's last applied update
    venue      text             NOT NULL,
    symbol     text             NOT NULL,
    update_id  bigint           NOT NULL,
    bid_px     double precision,
    bid_sz     double precision,
    ask_px     double precision,
    ask_sz     double precision,
    spread_bps double precision,
    bids       jsonb,                      -- [[price, size], ...], best first
    asks       jsonb,
    recv_ts    timestamptz,
    asset_id   integer,
    PRIMARY KEY (venue, symbol, update_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS derivatives (
    ts                  timestamptz      NOT NULL,
    venue               text             NOT NULL,
    symbol              text             NOT NULL,
    funding_rate        double precision,
    next_funding_time   timestamptz,
    open_interest       double precision,
    open_interest_value double precision,
    mark_price          double precision,
    index_price         double precision,
    basis               double precision,
    PRIMARY KEY (venue, symbol, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS dex_metrics (
    ts             timestamptz      NOT NULL,
    chain          text             NOT NULL,
    pool_address   text             NOT NULL,
    tvl_usd        double precision,
    volume_24h_usd double precision,
    liquidity      numeric,          -- Uniswap v3 liquidity is a uint128
    price          double precision,
    depth_2pct_usd double precision,
    PRIMARY KEY (chain, pool_address, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS onchain_flows (
    ts           timestamptz NOT NULL,  -- block time
    chain        text        NOT NULL,
    block_number bigint,
    block_hash   text        NOT NULL,
    tx_hash      text,
    log_index    integer     NOT NULL,
    token        text,
    from_addr    text,
    to_addr      text,
    amount       numeric,                -- scaled by the token's decimals (1.5 USDC is 1.5), exact
    from_tag     text,
    to_tag       text,
    PRIMARY KEY (chain, block_hash, log_index, ts)
) PARTITION BY RANGE (ts);

-- Time-range scans inside a day partition ("the last hour"): rows arrive roughly in time order, so
-- a BRIN index is a few pages and costs next to nothing per insert, unlike a second B-tree.
CREATE INDEX IF NOT EXISTS ticks_ts_brin ON ticks USING brin (ts);
CREATE INDEX IF NOT EXISTS books_ts_brin ON books USING brin (ts);
CREATE INDEX IF NOT EXISTS derivatives_ts_brin ON derivatives USING brin (ts);
CREATE INDEX IF NOT EXISTS dex_metrics_ts_brin ON dex_metrics USING brin (ts);
CREATE INDEX IF NOT EXISTS onchain_flows_ts_brin ON onchain_flows USING brin (ts);
