-- Time-series tables on TimescaleDB: hypertables with one-day chunks, compressed after 7 days.
--
-- The same columns and keys as the plain PostgreSQL variant (0002_time_series.postgres.sql, which
-- explains the choices). TimescaleDB, like native partitioning, requires every unique index to
-- include the time column, so each natural key ends with `ts`; `ts` is the venue's own time of
-- the record and never changes for a given key, so the natural key still holds.
--
-- Retention is a TimescaleDB policy (drop_chunks in its background scheduler); its interval comes
-- from the sink's retention_days, so the sink's maintenance job sets it (ingestd.db.maintenance),
-- not this file. Compressed chunks still accept INSERT ... ON CONFLICT DO NOTHING (TimescaleDB
-- >= 2.11 checks the unique key against compressed data), so a late replay stays idempotent.

CREATE EXTENSION IF NOT EXISTS timescaledb;

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
);

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
);

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
);

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
);

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
);

-- create_hypertable's classic signature: accepted by every TimescaleDB 2.x (deprecated, not removed,
-- since 2.13 in favour of by_range()). migrate_data: a table left behind with rows (by the legacy
-- service) is converted too, slowly but once; an empty one costs nothing extra.
SELECT create_hypertable(t::regclass, 'ts', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE,
                         migrate_data => TRUE)
FROM unnest(ARRAY['ticks', 'books', 'derivatives', 'dex_metrics', 'onchain_flows']) AS t;

-- Compression: segments per market (queries filter on one market), ordered by time inside.
-- Guarded, because changing compression settings fails once chunks are compressed.
DO $$
DECLARE
    spec record;
BEGIN
    FOR spec IN
        SELECT * FROM (VALUES
            ('ticks', 'venue, symbol', 'ts, trade_id'),
            ('books', 'venue, symbol', 'ts, update_id'),
            ('derivatives', 'venue, symbol', 'ts'),
            ('dex_metrics', 'chain, pool_address', 'ts'),
            ('onchain_flows', 'chain, token', 'ts, log_index')
        ) AS v (tbl, segmentby, orderby)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM timescaledb_information.hypertables
            WHERE hypertable_schema = current_schema() AND hypertable_name = spec.tbl AND compression_enabled
        ) THEN
            EXECUTE format(
                'ALTER TABLE %I SET (timescaledb.compress, timescaledb.compress_segmentby = %L,'
                ' timescaledb.compress_orderby = %L)',
                spec.tbl, spec.segmentby, spec.orderby
            );
        END IF;
        PERFORM add_compression_policy(spec.tbl::regclass, INTERVAL '7 days', if_not_exists => TRUE);
    END LOOP;
END
$$;
