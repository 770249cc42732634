-- The runbook's data-quality checks as views over the last hour (now() is read when the view is
-- queried; with partitions or chunks only the current day's are scanned).
--
-- Unlike the runbook's SQL, which partitioned by asset_id, these partition by (venue, symbol): one
-- symbol traded on two venues is two series. The outlier check is the runbook's, made valid SQL
-- (window functions cannot appear in WHERE, so the lag is computed in a subquery).
--
--   SELECT * FROM dq_tick_gaps LIMIT 10;      -- the ten longest silences of the last hour
--   SELECT * FROM dq_price_outliers;           -- trades more than 10 % away from the previous one

CREATE OR REPLACE VIEW dq_tick_gaps AS
SELECT venue, symbol, asset_id, ts, next_ts, next_ts - ts AS gap
FROM (
    SELECT venue, symbol, asset_id, ts,
           lead(ts) OVER (PARTITION BY venue, symbol ORDER BY ts, trade_id) AS next_ts
    FROM ticks
    WHERE ts >= now() - INTERVAL '1 hour'
) AS t
WHERE next_ts IS NOT NULL
ORDER BY gap DESC, venue, symbol, ts;

CREATE OR REPLACE VIEW dq_price_outliers AS
SELECT venue, symbol, asset_id, ts, trade_id, price, prev_price, price / prev_price - 1.0 AS change
FROM (
    SELECT venue, symbol, asset_id, ts, trade_id, price,
           lag(price) OVER (PARTITION BY venue, symbol ORDER BY ts, trade_id) AS prev_price
    FROM ticks
    WHERE ts >= now() - INTERVAL '1 hour'
) AS t
WHERE price > prev_price * 1.1 OR price < prev_price * 0.9
ORDER BY ts DESC, venue, symbol, trade_id DESC;
