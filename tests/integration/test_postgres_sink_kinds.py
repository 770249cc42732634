"""PostgresSink and the record kinds stored by declaration (ingestd/sinks/tables.py), against a real
PostgreSQL server: exact round trips, idempotency, hostile values, partitions, spool replay, the
schema against the declarations, the 0004 upgrade and the derived price views (and SQLite's agreeing with them)."""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import sqlite3
import statistics
from pathlib import Path

import msgspec
import psycopg
import pytest

from ingestd.db import migrate, run_maintenance
from ingestd.db.maintenance import ensure_partitions
from ingestd.db.migrate import load_migrations
from ingestd.model import Checkpoint, Derivative, Price, Trade, WhaleTrade
from ingestd.sinks import tables
from ingestd.sinks.base import SinkError
from ingestd.sinks.postgres import LIMITS, PostgresSink
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry
from tests import samples
from tests.integration.test_postgres_sink import config
from tests.pg_server import Database, pg_database, pg_server  # noqa: F401  (fixtures)
from tests.sink_cases import (
    CRAFTED, NUL, SAMPLE, SURROGATE, by_kind, canonical, outage_through_the_spool, with_text,
)

KINDS = [t.record for t in tables.GENERIC]
NAMES = [t.name for t in tables.GENERIC]
DAY_US = 86_400_000_000
NOW_US = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)


@pytest.fixture
def stats() -> StatsRegistry:
    return StatsRegistry("test")


@pytest.fixture(params=[True, False], ids=["optimistic", "on-conflict"])
def sink(request, pg_database: Database, stats: StatsRegistry):
    s = PostgresSink("pg", config(pg_database), stats=stats, optimistic=request.param)
    s.open()
    yield s
    s.close()


@pytest.fixture
def sql(pg_database: Database):
    conn = psycopg.connect(pg_database.conninfo, autocommit=True)

    def run(query: str, params: tuple = ()) -> list[tuple]:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    yield run
    conn.close()


def counters(stats: StatsRegistry) -> tuple[int, int, int]:
    c = stats.counters
    return c["sink.pg.rows_written"], c["sink.pg.duplicates_skipped"], c["sink.pg.records_refused"]


# --- round trips and idempotency -----------------------------------------------------------------


def test_every_kind_round_trips_exactly(sink: PostgresSink) -> None:
    batch = [r for i in range(3) for r in samples.one_of_each_new_kind(i)]
    sink.write(batch)
    expected = by_kind(batch)
    for kind in KINDS:
        assert sink.records(kind) == expected[kind], kind.__name__
    assert sink.counts(NAMES) == dict.fromkeys(NAMES, 3)


def test_uint_quantities_are_exact_numerics_and_times_exact_timestamps(sink: PostgresSink, sql) -> None:
    flow, pool, derivative = samples.onchain_flow(), samples.dex_metric(), samples.derivative()
    sink.write([flow, pool, derivative, samples.prediction_book()])
    assert sql("SELECT amount::text, pg_typeof(amount)::text FROM onchain_flows") == [(flow.amount, "numeric")]
    # numeric arithmetic stays exact: a float would have lost the low digits long before 2^127
    assert sql("SELECT (liquidity - 12345)::text FROM dex_metrics") == [(str(2**127),)]
    assert sql("SELECT (amount * 10::numeric ^ 18)::numeric(200, 0)::text FROM onchain_flows") == [
        (flow.amount.replace(".", ""),)
    ]
    assert sql("SELECT (extract(epoch FROM next_funding_time) * 1e6)::int8, (extract(epoch FROM recv_ts) * 1e6)::int8"
               " FROM derivatives") == [(derivative.next_funding_us, derivative.recv_us)]
    assert sql("SELECT bids -> 0 ->> 1, jsonb_array_length(asks) FROM prediction_books") == [("1000.0", 1)]


def test_the_same_batch_twice_is_stored_once(sink: PostgresSink, stats: StatsRegistry) -> None:
    batch = samples.one_of_each_new_kind(0) + samples.one_of_each_new_kind(1)
    sink.write(batch)
    sink.write(batch)
    assert sink.counts(NAMES) == dict.fromkeys(NAMES, 2)
    assert counters(stats) == (14, 14, 0)


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_one_stored_row_does_not_discard_the_rest_of_the_batch(sink: PostgresSink, stats: StatsRegistry, kind) -> None:
    make = SAMPLE[tables.BY_KIND[kind.KIND]]
    sink.write([make(5)])
    sink.write([make(i) for i in range(10)] + [make(3)])  # stored before, and twice inside the batch
    assert sink.records(kind) == [make(i) for i in range(10)]
    assert counters(stats) == (10, 2, 0)
    sink.write([make(i) for i in range(10, 20)])  # and the next batch of new rows is stored too
    assert len(sink.records(kind)) == 20


def test_none_fields_are_stored_as_null(sink: PostgresSink, sql) -> None:
    sparse = [
        msgspec.structs.replace(samples.derivative(), funding_rate=None, next_funding_us=None, basis=None),
        msgspec.structs.replace(samples.onchain_flow(), from_tag=None, to_tag=None),
        msgspec.structs.replace(samples.prediction_book(), best_bid=None, best_ask=None, bids=[], asks=[]),
        msgspec.structs.replace(samples.whale_trade(), pseudonym=None, title=None, outcome=None),
    ]
    sink.write(sparse)
    for record in sparse:
        assert sink.records(type(record)) == [record]
    assert sql("SELECT funding_rate IS NULL AND next_funding_time IS NULL FROM derivatives") == [(True,)]


def test_mixed_batches_commit_new_kinds_with_trades_and_checkpoints(sink: PostgresSink) -> None:
    trade = Trade("binance", "BTCUSDT", 1, 1.0, 1.0, "buy", NOW_US, NOW_US)
    sink.write([trade, *samples.one_of_each_new_kind(), Checkpoint("binance", "BTCUSDT", 1)])
    assert sink.trade_ids("binance", "BTCUSDT") == [1]
    assert sink.resume_points("binance") == {"BTCUSDT": 1}
    assert sink.counts(NAMES) == dict.fromkeys(NAMES, 1)


# --- hostile values ------------------------------------------------------------------------------


def test_crafted_strings_are_stored_verbatim(sink: PostgresSink, stats: StatsRegistry, sql) -> None:
    batch = with_text(CRAFTED)
    sink.write(batch)
    expected = by_kind(batch)
    for kind in KINDS:
        assert canonical(sink.records(kind)) == canonical(expected[kind]), kind.__name__
    assert counters(stats) == (len(batch), 0, 0)
    assert sql("SELECT count(*) FROM prices") == [(len(expected[Price]),)]  # the table survived its name


def test_unstorable_values_are_refused_with_a_reason_and_the_rest_is_stored(
    sink: PostgresSink, stats: StatsRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd.sinks.postgres")
    good = samples.one_of_each_new_kind(0)
    bad_by_reason = {
        "chain contains a NUL character": msgspec.structs.replace(samples.onchain_flow(1), chain=NUL),
        "title contains a NUL character": msgspec.structs.replace(samples.whale_trade(1), title=NUL),
        "coin_id is not valid Unicode": msgspec.structs.replace(samples.price(1), coin_id=SURROGATE),
        "amount='12abc' is not an exact decimal": msgspec.structs.replace(samples.onchain_flow(2), amount="12abc"),
        "liquidity='' is not an exact decimal": msgspec.structs.replace(samples.dex_metric(1), liquidity=""),
        "log_index=2147483648 is not a 32-bit integer":
            msgspec.structs.replace(samples.onchain_flow(3), log_index=2**31),
        "market_cap_rank=1099511627776 is not a 32-bit integer":
            msgspec.structs.replace(samples.price(2), market_cap_rank=2**40),
        "block_number=9223372036854775808 is not a 64-bit integer":
            msgspec.structs.replace(samples.onchain_flow(4), block_number=2**63),
        "next_funding_us=-5 is not a time between 1970 and 9999":
            msgspec.structs.replace(samples.derivative(1), next_funding_us=-5),
        "ts_us=-1 is not a time between 1970 and 9999": msgspec.structs.replace(samples.prediction_trade(1), ts_us=-1),
        "bids are not [price, size] pairs":
            msgspec.structs.replace(samples.prediction_book(1), bids=[(0.5, 1.0, 9.0)]),
        "size='12' is not a number": msgspec.structs.replace(samples.prediction_trade(2), size="12"),
    }
    bad = list(bad_by_reason.values())
    sink.write(bad[:6] + good + bad[6:])  # does not raise
    for record in good:
        assert sink.records(type(record)) == [record]
    assert counters(stats) == (len(good), 0, len(bad))
    messages = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(messages) == len(bad)
    for reason in bad_by_reason:
        assert any(reason in m for m in messages), reason
    assert any("onchain_flow chain='nul\\x00inside'" in m for m in messages)  # escaped, key shown
    for reason, record in bad_by_reason.items():
        assert reason in (tables.refusal_reason(record, LIMITS) or "")
    sink.write(samples.one_of_each_new_kind(1))  # and the sink keeps working
    assert sink.counts(NAMES) == dict.fromkeys(NAMES, 2)


def test_a_value_only_the_server_refuses_is_isolated(sink: PostgresSink, stats: StatsRegistry, sql, caplog) -> None:
    """A constraint the screening knows nothing about: the batch is halved until the culprit is found."""
    caplog.set_level(logging.WARNING, logger="ingestd.sinks.postgres")
    sql("ALTER TABLE whale_trades ALTER COLUMN trade_id TYPE varchar(100)")  # too long: a class 22 error
    batch = [samples.whale_trade(i) for i in range(6)]
    batch[3] = msgspec.structs.replace(batch[3], trade_id="0x" + "f" * 200)
    sink.write(batch + samples.one_of_each_new_kind(0)[:6])
    assert sorted(t.trade_id for t in sink.records(WhaleTrade)) == sorted(
        samples.whale_trade(i).trade_id for i in range(6) if i != 3
    )
    assert counters(stats)[2] == 1
    assert any("PostgreSQL refused it" in r.getMessage() for r in caplog.records)
    assert sink.counts(NAMES[:6]) == dict.fromkeys(NAMES[:6], 1)


# --- assets --------------------------------------------------------------------------------------


def test_derivative_symbols_are_registered_as_assets_and_no_other_kinds_identifiers(sink: PostgresSink, sql) -> None:
    sql("INSERT INTO assets (symbol, sector, risk_tags) VALUES ('ETHUSDT', 'Layer1', ARRAY['mid-cap'])")
    sink.write(samples.one_of_each_new_kind(0) + samples.one_of_each_new_kind(1)
               + [msgspec.structs.replace(samples.derivative(2), symbol=s) for s in ("ETHUSDT", "SOLUSDT")])
    # prices' coin and ticker, pools, token contracts, outcome tokens: none of them is an asset row
    assert sorted(sql("SELECT symbol, sector, risk_tags FROM assets")) == [
        ("BTCUSDT", None, None), ("ETHUSDT", "Layer1", ["mid-cap"]), ("SOLUSDT", None, None),
    ]
    # A trade of the same market shares the row (and the cache knew it: no second registration).
    sink.write([Trade("binance", "SOLUSDT", 1, 1.0, 1.0, "buy", NOW_US, NOW_US)])
    assert sql("SELECT t.asset_id = a.asset_id FROM ticks t JOIN assets a USING (symbol)") == [(True,)]
    assert sql("SELECT count(*) FROM assets") == [(3,)]


def test_a_derivatives_asset_is_committed_on_its_own_and_outlives_a_failed_batch(sink: PostgresSink, sql) -> None:
    sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$")
    sql("CREATE TRIGGER refuse BEFORE INSERT ON derivatives FOR EACH ROW EXECUTE FUNCTION refuse()")
    with pytest.raises(SinkError, match="refused"):
        sink.write([samples.derivative(0)])
    assert sql("SELECT symbol FROM assets") == [("BTCUSDT",)]  # seen from another session: committed
    assert sink.counts(["derivatives"]) == {"derivatives": 0}
    sql("DROP TRIGGER refuse ON derivatives")
    sink.write([samples.derivative(0), Trade("binance", "BTCUSDT", 1, 1.0, 1.0, "buy", NOW_US, NOW_US)])
    assert sql("SELECT t.asset_id = a.asset_id FROM ticks t JOIN assets a USING (symbol)") == [(True,)]
    assert sink.records(Derivative) == [samples.derivative(0)]


# --- partitions, retention, outages ---------------------------------------------------------------


def test_backfilled_days_get_partitions_and_a_dropped_one_is_recreated(sink: PostgresSink, sql) -> None:
    old = [r for i in range(2) for r in samples.one_of_each_new_kind(i)]  # 2023-11-14, long before today
    sink.write(old)
    for name in NAMES:
        assert sql("SELECT to_regclass(%s) IS NOT NULL", (f"{name}_p20231114",)) == [(True,)], name
    sql("DROP TABLE prices_p20231114")
    sink.write([samples.price(7)])  # "no partition": the sink reloads what exists, creates it, retries
    assert sink.records(Price) == [samples.price(7)]


def test_retention_drops_old_days_of_every_new_table(pg_database: Database) -> None:
    s = PostgresSink("pg", config(pg_database, retention_days=30))
    s.open()
    try:
        def at(record, ts_us):
            return msgspec.structs.replace(record, ts_us=ts_us)

        s.write([at(r, NOW_US - 40 * DAY_US) for r in samples.one_of_each_new_kind(0)]
                + [at(r, NOW_US) for r in samples.one_of_each_new_kind(1)])
        assert s.counts(NAMES) == dict.fromkeys(NAMES, 2)
        with psycopg.connect(pg_database.conninfo) as conn:
            report = run_maintenance(conn, 30)
        assert sorted(name.rsplit("_p", 1)[0] for name in report.dropped) == sorted(NAMES)
        assert s.counts(NAMES) == dict.fromkeys(NAMES, 1)
    finally:
        s.close()


def test_a_spool_outage_replays_every_kind_exactly_once(pg_database: Database, tmp_path: Path) -> None:
    sink = PostgresSink("pg", config(pg_database, retention_days=0))  # the samples are from 2023: keep them
    chunks = [samples.one_of_each_new_kind(i) + [Trade("binance", "BTCUSDT", i, 1.0, 1.0, "buy", NOW_US, NOW_US)]
              for i in range(30)]
    stats = outage_through_the_spool(sink, tmp_path / "spool", chunks)
    assert stats.counters["spool.pg.spooled_batches"] > 0
    assert stats.counters["spool.pg.replayed_batches"] == stats.counters["spool.pg.spooled_batches"]
    sink.open()  # the runner closed it
    try:
        expected = by_kind([r for chunk in chunks for r in chunk if not isinstance(r, Trade)])
        for kind in KINDS:
            assert sink.records(kind) == expected[kind], kind.__name__
        assert sink.trade_ids("binance", "BTCUSDT") == list(range(30))
    finally:
        sink.close()


def test_a_server_restart_mid_stream_loses_and_duplicates_nothing(pg_database: Database) -> None:
    s = PostgresSink("pg", config(pg_database))
    s.open()
    try:
        s.write(samples.one_of_each_new_kind(0))
        pg_database.server.stop(immediate=True)
        with pytest.raises(SinkError):
            s.write(samples.one_of_each_new_kind(1))
        pg_database.server.start()
        s.write(samples.one_of_each_new_kind(0) + samples.one_of_each_new_kind(1))  # a retry overlapping a replay
        assert s.counts(NAMES) == dict.fromkeys(NAMES, 2)
    finally:
        pg_database.server.start()
        s.close()


# --- schema -----------------------------------------------------------------------------------------


def test_the_schema_matches_the_declarations(pg_database: Database) -> None:
    """Columns in order, natural keys (with ts, as partitioning requires) and types: the SQLite schema
    is checked against the same declarations (tests/unit/test_sqlite_sink_kinds.py)."""
    wanted = {tables.TEXT: "text", tables.BIGINT: "bigint", tables.INTEGER: "integer",
              tables.FLOAT: "double precision", tables.TIME: "timestamp with time zone", tables.DECIMAL: "numeric",
              tables.LEVELS: "jsonb"}
    with psycopg.connect(pg_database.conninfo) as conn:
        migrate(conn)
        for table in tables.GENERIC:
            columns = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s"
                " ORDER BY ordinal_position", (table.name,),
            ).fetchall()
            assert tuple(name for name, _ in columns) == table.column_names, table.name
            assert dict(columns) == {c.name: wanted[c.type] for c in table.columns}, table.name
            key = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary"
                " ORDER BY array_position(i.indkey, a.attnum)", (table.name,),
            ).fetchall()
            assert tuple(name for (name,) in key) == table.partition_key, table.name


def test_a_version_3_database_is_upgraded_and_its_rows_kept(pg_database: Database) -> None:
    with psycopg.connect(pg_database.conninfo) as conn:
        migrate(conn)
        # Back to what version 3 left: the 0002 file as first shipped (before its comment fix), no 0004.
        conn.execute("DROP VIEW price_roi, price_comparisons, price_daily, price_volatility, price_latest")
        conn.execute("DROP TABLE prices, prediction_books, prediction_trades, whale_trades")
        for table in ("derivatives", "dex_metrics", "onchain_flows"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN recv_ts")
        conn.execute("DELETE FROM schema_migrations WHERE version = 4")
        conn.execute("UPDATE schema_migrations SET checksum = %s WHERE version = 2",
                     ("237a315eb4b047df1f1f9bd1191bdd891b3ca74c60b7524d1a76a471c6fd5611",))
        conn.commit()
        ensure_partitions(conn, "derivatives", [dt.date(2023, 11, 14)])
        conn.execute("INSERT INTO derivatives (ts, venue, symbol, funding_rate)"
                     " VALUES ('2023-11-14 22:13:20+00', 'bybit', 'ETHUSDT', 0.5)")  # stored before the upgrade
        conn.commit()
    s = PostgresSink("pg", config(pg_database, retention_days=0))  # keep 2023
    s.open()
    try:
        assert s.schema_version == 5
        s.write([samples.derivative(0)])
        old = Derivative("bybit", "ETHUSDT", 1_700_000_000_000_000, None, funding_rate=0.5)  # type: ignore[arg-type]
        assert s.records(Derivative) == [samples.derivative(0), old]
    finally:
        s.close()
    with psycopg.connect(pg_database.conninfo) as conn:
        result = migrate(conn)
        assert result.up_to_date and result.warnings == []  # the comment-only edit of 0002 is known
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert rows == [(1,), (2,), (3,), (4,), (5,)]


def test_every_0004_file_applies_twice(pg_database: Database) -> None:
    with psycopg.connect(pg_database.conninfo) as conn:
        migrate(conn)
        (m,) = [m for m in load_migrations() if m.version == 4 and m.mode == "postgres"]
        conn.execute(m.sql)
        conn.commit()


# --- the runbook's derived price metrics ---------------------------------------------------------------


HOUR_US = 3_600_000_000


def price(coin: str, age_us: int, usd: float, **fields) -> Price:
    return msgspec.structs.replace(samples.price(), coin_id=coin, symbol=coin[:3].upper(), ts_us=NOW_US - age_us,
                                   recv_us=NOW_US - age_us, price_usd=usd, **fields)


def test_price_views_compute_volatility_aggregates_comparisons_and_roi(pg_database: Database, sql) -> None:
    btc_path = [(400 * DAY_US, 10.0), (91 * DAY_US, 20.0), (31 * DAY_US, 40.0), (8 * DAY_US, 50.0),
                (2 * DAY_US, 80.0), (23 * HOUR_US, 90.0), (12 * HOUR_US, 100.0), (6 * HOUR_US, 110.0)]
    rows = [price("bitcoin", age, usd) for age, usd in btc_path]
    rows.append(price("bitcoin", HOUR_US, 121.0, market_cap=3000.0, price_change_pct_24h=2.0))
    rows.append(price("ethereum", 2 * HOUR_US, 60.5, market_cap=1000.0, price_change_pct_24h=5.0))
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).date()
    midnight_us = int(dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp() * 1e6)
    for hour, usd in ((1, 5.0), (12, 9.0), (23, 7.0)):
        rows.append(price("ethereum", NOW_US - (midnight_us + hour * HOUR_US), usd, total_volume=hour * 1.0))
    rows.append(price("dogecoin", 3 * DAY_US, 0.1))  # stale: no longer "latest"
    s = PostgresSink("pg", config(pg_database))
    s.open()
    try:
        s.write(rows)
    finally:
        s.close()

    assert sql("SELECT coin_id, price_usd FROM price_latest ORDER BY coin_id") == [
        ("bitcoin", 121.0), ("ethereum", 60.5),
    ]

    # Volatility: log returns between consecutive samples of the last 30 days.
    recent = [(age, usd) for age, usd in btc_path + [(HOUR_US, 121.0)] if age < 30 * DAY_US]
    returns = [(age, math.log(usd / prev), (prev_age - age) / 1e6)
               for (prev_age, prev), (age, usd) in zip(recent, recent[1:])]
    day_returns = [r for r in returns if r[0] < DAY_US]
    vol = sql("SELECT returns_24h, volatility_24h, volatility_7d, volatility_30d, volatility_24h_annualized,"
              " volatility_30d_annualized FROM price_volatility WHERE coin_id = 'bitcoin'")
    r24, v24, v7, v30, a24, a30 = vol[0]
    assert r24 == len(day_returns) == 4
    assert v24 == pytest.approx(statistics.stdev(r for _, r, _ in day_returns), rel=1e-12)
    assert v7 == v30 == pytest.approx(statistics.stdev(r for _, r, _ in returns), rel=1e-12)
    assert a24 == pytest.approx(v24 * math.sqrt(31557600 / statistics.mean(s for *_, s in day_returns)), rel=1e-12)
    assert a30 == pytest.approx(v30 * math.sqrt(31557600 / statistics.mean(s for *_, s in returns)), rel=1e-12)

    # Aggregates: one UTC day of ethereum.
    assert sql("SELECT open, high, low, close, mean, samples, total_volume FROM price_daily"
               " WHERE coin_id = 'ethereum' AND day = %s", (day,)) == [(5.0, 9.0, 5.0, 7.0, 7.0, 3, 23.0)]

    # Comparisons: against the market and against bitcoin.
    assert sql("SELECT coin_id, market_cap_share, change_rank_24h, price_btc, change_vs_btc_pct_24h"
               " FROM price_comparisons ORDER BY coin_id") == [
        ("bitcoin", 0.75, 2, 1.0, 0.0), ("ethereum", 0.25, 1, 0.5, 3.0),
    ]

    # ROI: the latest price over the last price at or before each window's start.
    (roi,) = sql("SELECT roi_24h, roi_7d, roi_30d, roi_90d, roi_365d FROM price_roi WHERE coin_id = 'bitcoin'")
    assert roi == pytest.approx((121 / 80 - 1, 121 / 50 - 1, 121 / 40 - 1, 121 / 20 - 1, 121 / 10 - 1), rel=1e-12)
    # ethereum's history starts three days ago: its last sample then (7.0 at 23:00) is the 24 h reference
    ((eth_24h, eth_7d),) = sql("SELECT roi_24h, roi_7d FROM price_roi WHERE coin_id = 'ethereum'")
    assert eth_24h == pytest.approx(60.5 / 7.0 - 1, rel=1e-12) and eth_7d is None


PRICE_VIEWS = {  # view -> its rows' order
    "price_latest": "source, coin_id", "price_volatility": "source, coin_id", "price_daily": "source, coin_id, day",
    "price_comparisons": "source, coin_id", "price_roi": "source, coin_id",
}


def random_prices(seed: int) -> list[Price]:
    """Random walks of four coins: dense over the last three days, a sample every other day or so
    before, back past a year; some prices, market caps and 24 h changes missing, a price of 0. No
    sample within ten minutes of the views' window edges (1, 7, 30 days before now), where the two
    stores' clocks, read a moment apart, could disagree."""
    rng = random.Random(seed)
    old_days = sorted({d for d in range(4, 41) if rng.random() < 0.5} | set(rng.sample(range(41, 400), 20)))
    edges = [NOW_US - days * DAY_US for days in (1, 7, 30)]
    rows = []
    for coin in ("bitcoin", "ethereum", "solana", "tether"):
        ages = [d * DAY_US + rng.randrange(-6 * HOUR_US, 6 * HOUR_US) for d in old_days]
        age = 3 * DAY_US
        while age > 0:
            ages.append(age)
            age -= rng.randrange(10 * 60_000_000, 2 * HOUR_US)
        usd = rng.uniform(0.5, 5000.0)
        for age in sorted(ages, reverse=True):
            if any(abs(NOW_US - age - edge) < 10 * 60_000_000 for edge in edges):
                continue
            usd *= math.exp(rng.gauss(0.0, 0.03))
            rows.append(price(
                coin, age, None if rng.random() < 0.03 else 0.0 if rng.random() < 0.01 else usd,
                market_cap=None if rng.random() < 0.1 else usd * rng.uniform(1e6, 1e7),
                price_change_pct_24h=None if rng.random() < 0.1 else rng.uniform(-10.0, 10.0),
                total_volume=rng.uniform(1e3, 1e6),
            ))
    return rows


def same_values(a: tuple, b: tuple) -> bool:
    """Equal, floats to rounding (sums and means may add up in another order)."""
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) if isinstance(x, float) and isinstance(y, float) else x == y
        for x, y in zip(a, b)
    )


def test_sqlite_price_views_agree_with_postgresqls(pg_database: Database, tmp_path: Path) -> None:
    """The same prices in both SQL stores: every price view gives the same rows and columns, times
    as µs and days as 'YYYY-MM-DD' (SQLite's representations; ingestd/sinks/sqlite.py, _SCHEMA_V3)."""
    rows = random_prices(seed=11)
    pg = PostgresSink("pg", config(pg_database, retention_days=0))
    pg.open()
    lite = SqliteSink("lite", tmp_path / "ingestd.sqlite")
    lite.open()
    try:
        pg.write(rows)
        lite.write(rows)
    finally:
        pg.close()
        lite.close()

    def plain(value):
        if isinstance(value, dt.datetime):
            return (value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
        if isinstance(value, dt.date):
            return value.isoformat()
        return value

    with psycopg.connect(pg_database.conninfo) as conn, sqlite3.connect(tmp_path / "ingestd.sqlite") as reader:
        conn.execute("SET TIME ZONE 'UTC'")  # PostgreSQL's intervals in whole 24 h days, as SQLite's
        for name, order in PRICE_VIEWS.items():
            cur = conn.execute(f"SELECT * FROM {name} ORDER BY {order}")
            pg_columns = [c.name for c in cur.description]
            pg_rows = [tuple(plain(v) for v in row) for row in cur.fetchall()]
            lite_cur = reader.execute(f"SELECT * FROM {name} ORDER BY {order}")
            assert [c[0] for c in lite_cur.description] == pg_columns, name
            lite_rows = lite_cur.fetchall()
            assert len(lite_rows) == len(pg_rows) > 3, name
            for lite_row, pg_row in zip(lite_rows, pg_rows):
                assert same_values(lite_row, pg_row), (name, lite_row, pg_row)
            if name == "price_volatility":  # the windows were not all empty
                assert all(row[5] is not None and row[7] is not None for row in pg_rows)
