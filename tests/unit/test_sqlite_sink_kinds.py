"""SqliteSink and the record kinds stored by declaration (ingestd/sinks/tables.py): derivatives, DEX
metrics, on-chain flows, prices, prediction-market books and trades, whale trades."""

from __future__ import annotations

import datetime as dt
import logging
import math
import sqlite3
import statistics
from pathlib import Path

import msgspec
import pytest

from ingestd.model import Checkpoint, Derivative, DexMetric, OnchainFlow, PredictionBook, Price, Trade
from ingestd.sinks import sqlite as sqlite_module
from ingestd.sinks import tables
from ingestd.sinks.base import SinkError
from ingestd.sinks.sqlite import SCHEMA_VERSION, SqliteSink
from ingestd.stats import StatsRegistry
from tests import samples
from tests.sink_cases import CRAFTED, NUL, SAMPLE, SURROGATE, by_kind, canonical, outage_through_the_spool, with_text

KINDS = [t.record for t in tables.GENERIC]
NAMES = [t.name for t in tables.GENERIC]


@pytest.fixture
def stats() -> StatsRegistry:
    return StatsRegistry("test")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ingestd.sqlite"


@pytest.fixture
def sink(db_path: Path, stats: StatsRegistry):
    s = SqliteSink("local", db_path, stats=stats)
    s.open()
    yield s
    s.close()


def counters(stats: StatsRegistry) -> tuple[int, int, int]:
    c = stats.counters
    return c["sink.local.rows_written"], c["sink.local.duplicates_skipped"], c["sink.local.records_refused"]


def test_every_kind_round_trips_exactly(sink: SqliteSink) -> None:
    batch = [r for i in range(3) for r in samples.one_of_each_new_kind(i)]
    sink.write(batch)
    expected = by_kind(batch)
    for kind in KINDS:
        assert sink.records(kind) == canonical(expected[kind]) == expected[kind], kind.__name__
    assert sink.counts(NAMES) == dict.fromkeys(NAMES, 3)


def test_big_integers_and_decimals_are_stored_as_exact_text(sink: SqliteSink, db_path: Path) -> None:
    flow = samples.onchain_flow()
    pool = samples.dex_metric()
    sink.write([flow, pool])
    with sqlite3.connect(db_path) as reader:
        amount = reader.execute("SELECT amount, typeof(amount) FROM onchain_flows").fetchone()
        liquidity = reader.execute("SELECT liquidity, typeof(liquidity) FROM dex_metrics").fetchone()
        bids = reader.execute("SELECT bids FROM prediction_books").fetchall()
    assert amount == (flow.amount, "text")
    assert liquidity == (str(2**127 + 12345), "text")
    assert bids == []
    sink.write([samples.prediction_book()])
    with sqlite3.connect(db_path) as reader:
        assert reader.execute("SELECT bids, asks FROM prediction_books").fetchone() == (
            "[[0.52,1000.0],[0.51,250.0]]", "[[0.54,800.0]]",
        )


def test_the_same_batch_twice_is_stored_once(sink: SqliteSink, stats: StatsRegistry) -> None:
    batch = samples.one_of_each_new_kind(0) + samples.one_of_each_new_kind(1)
    sink.write(batch)
    sink.write(batch)
    assert sink.counts(NAMES) == dict.fromkeys(NAMES, 2)
    assert counters(stats) == (14, 14, 0)


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_one_stored_row_does_not_discard_the_rest_of_the_batch(sink: SqliteSink, stats: StatsRegistry, kind) -> None:
    make = SAMPLE[tables.BY_KIND[kind.KIND]]
    sink.write([make(5)])
    sink.write([make(i) for i in range(10)] + [make(3)])  # stored before, and twice inside the batch
    assert sink.records(kind) == [make(i) for i in range(10)]
    assert counters(stats) == (10, 2, 0)


def test_none_fields_are_stored_as_null_and_read_back_as_none(sink: SqliteSink) -> None:
    sparse = [
        msgspec.structs.replace(samples.derivative(), funding_rate=None, next_funding_us=None, basis=None),
        msgspec.structs.replace(samples.onchain_flow(), from_tag=None, to_tag=None),
        msgspec.structs.replace(samples.prediction_book(), best_bid=None, best_ask=None, bids=[], asks=[]),
        msgspec.structs.replace(samples.whale_trade(), pseudonym=None, title=None, outcome=None),
    ]
    sink.write(sparse)
    for record in sparse:
        assert sink.records(type(record)) == [record]


def test_mixed_batches_with_trades_and_checkpoints_store_everything(sink: SqliteSink) -> None:
    trade = Trade("binance", "BTCUSDT", 1, 1.0, 1.0, "buy", 5, 6)
    sink.write([trade, *samples.one_of_each_new_kind(), Checkpoint("binance", "BTCUSDT", 1)])
    assert sink.trade_ids("binance", "BTCUSDT") == [1]
    assert sink.resume_points("binance") == {"BTCUSDT": 1}
    assert sink.counts(NAMES) == dict.fromkeys(NAMES, 1)


def test_crafted_strings_are_stored_verbatim(sink: SqliteSink, stats: StatsRegistry) -> None:
    batch = with_text([*CRAFTED, NUL])
    sink.write(batch)
    expected = by_kind(batch)
    for kind in KINDS:
        assert canonical(sink.records(kind)) == canonical(expected[kind]), kind.__name__
    assert counters(stats) == (len(batch), 0, 0)


def test_unstorable_values_are_refused_with_a_reason_and_the_rest_is_stored(
    sink: SqliteSink, stats: StatsRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd.sinks.sqlite")
    good = samples.one_of_each_new_kind(0)
    bad = [
        *with_text([SURROGATE], first_i=500),  # every text field of every kind
        msgspec.structs.replace(samples.onchain_flow(1), block_number=2**64),
        msgspec.structs.replace(samples.price(1), market_cap=10**400),
        msgspec.structs.replace(samples.prediction_book(1), bids=[("x", object())]),
        msgspec.structs.replace(samples.derivative(1), venue=["not", "text"]),
        Trade("binance", "BTC\udcff", 1, 1.0, 1.0, "buy", 5, 6),
    ]
    sink.write(bad[: len(bad) // 2] + good + bad[len(bad) // 2 :])  # does not raise
    for record in good:
        assert sink.records(type(record)) == [record]
    assert sink.counts()["ticks"] == 0
    with sqlite3.connect(sink.path) as reader:  # the good derivative's market only: no refused symbol
        assert reader.execute("SELECT symbol FROM assets").fetchall() == [("BTCUSDT",)]
    assert counters(stats) == (len(good), 0, len(bad))
    messages = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(messages) == tables.MAX_REFUSALS_LOGGED + 1  # and one line for the rest
    assert any("lone surrogate" in m for m in messages)
    reasons = [tables.refusal_reason(r, sqlite_module.LIMITS) for r in bad[-5:]]
    assert reasons == [
        "block_number=18446744073709551616 is not a 64-bit integer",
        f"market_cap={10**400!r} is not a number",
        reasons[2],
        "venue is list, not text",
        "symbol is not valid Unicode (it holds a lone surrogate)",
    ]
    assert reasons[2].startswith("bids are not [price, size] pairs")
    sink.write(samples.one_of_each_new_kind(1))  # and the sink keeps working
    assert sink.counts(NAMES) == dict.fromkeys(NAMES, 2)


def test_a_bug_that_is_no_bad_value_still_raises(sink: SqliteSink) -> None:
    """The screening path must not swallow an error the records do not explain."""

    def broken(record):
        raise TypeError("a bug in the row builder")

    object.__setattr__(tables.PRICES, "row", broken)
    try:
        with pytest.raises(TypeError, match="a bug"):
            sink.write([samples.price()])
    finally:
        object.__setattr__(tables.PRICES, "row", tables._row_builder(tables.PRICES.columns))
    assert sink.counts(["prices"]) == {"prices": 0}


def test_a_spool_outage_replays_every_kind_exactly_once(sink: SqliteSink, tmp_path: Path) -> None:
    chunks = [samples.one_of_each_new_kind(i) + [Trade("binance", "BTCUSDT", i, 1.0, 1.0, "buy", 5, 6)]
              for i in range(30)]
    stats = outage_through_the_spool(sink, tmp_path / "spool", chunks)
    assert stats.counters["spool.local.spooled_batches"] > 0
    assert stats.counters["spool.local.replayed_batches"] == stats.counters["spool.local.spooled_batches"]
    sink.open()  # the runner closed it
    expected = by_kind([r for chunk in chunks for r in chunk if not isinstance(r, Trade)])
    for kind in KINDS:
        assert canonical(sink.records(kind)) == canonical(expected[kind]), kind.__name__
    assert sink.trade_ids("binance", "BTCUSDT") == list(range(30))


# --- assets ----------------------------------------------------------------------------------------


def test_derivative_symbols_are_registered_as_assets_and_no_other_kinds_identifiers(
    sink: SqliteSink, db_path: Path
) -> None:
    with sqlite3.connect(db_path) as operator:
        operator.execute("INSERT INTO assets (symbol, sector) VALUES ('ETHUSDT', 'Layer1')")
    sink.write(samples.one_of_each_new_kind(0) + samples.one_of_each_new_kind(1)
               + [msgspec.structs.replace(samples.derivative(2), symbol=s) for s in ("ETHUSDT", "SOLUSDT")])
    # prices' coin and ticker, pools, token contracts, outcome tokens: none of them is an asset row
    assert sorted(view(db_path, "SELECT symbol, sector FROM assets")) == [
        ("BTCUSDT", None), ("ETHUSDT", "Layer1"), ("SOLUSDT", None),
    ]
    # A trade of the same market shares the row (and the cache knew it: no second registration).
    sink.write([Trade("binance", "SOLUSDT", 1, 1.0, 1.0, "buy", 5, 6)])
    assert view(db_path, "SELECT t.asset_id = a.asset_id FROM ticks t JOIN assets a USING (symbol)") == [(1,)]
    assert sink.counts(["assets"]) == {"assets": 3}


def test_a_derivatives_asset_is_committed_on_its_own_and_outlives_a_failed_batch(
    sink: SqliteSink, db_path: Path
) -> None:
    with sqlite3.connect(db_path) as operator:
        operator.execute("CREATE TRIGGER refuse BEFORE INSERT ON derivatives BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(SinkError, match="refused"):
        sink.write([samples.derivative(0)])
    assert view(db_path, "SELECT asset_id, symbol FROM assets") == [(1, "BTCUSDT")]  # visible to others: committed
    assert sink.counts(["derivatives"]) == {"derivatives": 0}
    with sqlite3.connect(db_path) as operator:
        operator.execute("DROP TRIGGER refuse")
    sink.write([samples.derivative(0), Trade("binance", "BTCUSDT", 1, 1.0, 1.0, "buy", 5, 6)])
    assert view(db_path, "SELECT asset_id FROM ticks") == [(1,)]
    assert sink.records(Derivative) == [samples.derivative(0)]


# --- schema ----------------------------------------------------------------------------------------


def test_the_schema_matches_the_declarations(sink: SqliteSink, db_path: Path) -> None:
    """Columns, in order, and natural keys: what the PostgreSQL schema has too (tests/integration)."""
    with sqlite3.connect(db_path) as reader:
        for table in tables.GENERIC:
            info = reader.execute(f"PRAGMA table_info({table.name})").fetchall()
            assert tuple(row[1] for row in info) == table.column_names, table.name
            key = sorted((row[5], row[1]) for row in info if row[5])
            assert tuple(name for _, name in key) == table.key, table.name
            declared = {c.name: c.type for c in table.columns}
            affinity = {row[1]: row[2] for row in info}
            for name, kind in declared.items():
                wanted = {tables.TEXT: "TEXT", tables.DECIMAL: "TEXT", tables.LEVELS: "TEXT", tables.FLOAT: "REAL",
                          tables.TIME: "INTEGER", tables.BIGINT: "INTEGER", tables.INTEGER: "INTEGER"}[kind]
                assert affinity[name] == wanted, (table.name, name)


def test_a_version_1_database_is_upgraded_in_place(db_path: Path) -> None:
    with sqlite3.connect(db_path) as old:
        for statement in sqlite_module._SCHEMA_V1:
            old.execute(statement)
        old.execute("INSERT INTO ticks (venue, symbol, trade_id) VALUES ('binance', 'BTCUSDT', 7)")
        old.execute("PRAGMA user_version = 1")
    sink = SqliteSink("local", db_path)
    sink.open()
    try:
        assert sink.trade_ids("binance", "BTCUSDT") == [7]
        sink.write(samples.one_of_each_new_kind())
        assert sink.counts(NAMES) == dict.fromkeys(NAMES, 1)
    finally:
        sink.close()
    with sqlite3.connect(db_path) as reader:
        assert reader.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (4,)


def test_a_version_2_database_gets_the_price_views_and_keeps_its_rows(db_path: Path) -> None:
    with sqlite3.connect(db_path) as old:
        for statement in sqlite_module._SCHEMA_V1 + sqlite_module._SCHEMA_V2:
            old.execute(statement)
        old.execute("INSERT INTO prices (ts, source, coin_id, symbol, price_usd) VALUES (?, 'coingecko', 'bitcoin',"
                    " 'BTC', 50.0)", (NOW_US - HOUR_US,))
        old.execute("PRAGMA user_version = 2")
    sink = SqliteSink("local", db_path)
    sink.open()
    sink.close()
    with sqlite3.connect(db_path) as reader:
        assert reader.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert reader.execute("SELECT coin_id, price_usd FROM price_latest").fetchall() == [("bitcoin", 50.0)]


def test_read_helpers_refuse_unknown_tables(sink: SqliteSink) -> None:
    with pytest.raises(ValueError):
        sink.counts(["ticks; DROP TABLE ticks"])
    with pytest.raises(ValueError):
        sink.records(Trade)
    assert isinstance(sink.records(DexMetric), list) and isinstance(sink.records(OnchainFlow), list)
    assert sink.records(PredictionBook) == []


# --- the market-data runbook's derived price metrics (views, as in PostgreSQL's migration 0004) ------------


HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
NOW_US = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)
PRICE_VIEWS = ("price_latest", "price_volatility", "price_daily", "price_comparisons", "price_roi")


def price(coin: str, age_us: int, usd: float | None, **fields) -> Price:
    return msgspec.structs.replace(samples.price(), coin_id=coin, symbol=coin[:3].upper(), ts_us=NOW_US - age_us,
                                   recv_us=NOW_US - age_us, price_usd=usd, **fields)


def view(db_path: Path, query: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db_path) as reader:  # another connection, as a person's sqlite3 shell would be
        return reader.execute(query, params).fetchall()


# Bitcoin every 6 h over the last day, doubling or flat, after older samples: the windows of 24 h, 7
# and 30 days each see a different set of log returns, and each ROI window a different reference.
BTC_PATH = [
    (400 * DAY_US, 2.0),  # the 365-day ROI's reference
    (100 * DAY_US, 4.0),  # the 90-day ROI's
    (40 * DAY_US, 1000.0),  # before the 30 days: in no volatility
    (10 * DAY_US, 0.5),  # the first sample of the 30 days: no return
    (8 * DAY_US, 0.5),  # return 0, 48 h later; the 7-day ROI's reference
    (25 * HOUR_US, 1.0),  # return ln 2, 167 h later; the 24 h ROI's reference (24 h before the latest, to the µs)
    (19 * HOUR_US, 2.0),  # from here on, in the last 24 h: ln 2, ln 2, 0, ln 2, 6 h apart
    (13 * HOUR_US, 4.0),
    (7 * HOUR_US, 4.0),
    (HOUR_US, 8.0),
]


@pytest.fixture
def priced(sink: SqliteSink) -> dt.date:
    """BTC_PATH, ethereum's samples of one UTC day three days ago and of the last hours, tether without
    a 24 h change, a stale coin; returns ethereum's day."""
    rows = [price("bitcoin", age, usd) for age, usd in BTC_PATH[:-1]]
    rows.append(price("bitcoin", HOUR_US, 8.0, market_cap=3000.0, price_change_pct_24h=2.0))
    rows.append(price("bitcoin", 35 * DAY_US, None))  # no price: the 30-day ROI's reference, so NULL
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).date()
    midnight_us = int(dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp()) * 1_000_000
    # 01:00, 12:00 and the day's last microsecond, which a rounding to milliseconds would push into the next day
    for at_us, usd, volume in ((HOUR_US, 5.0, 1.0), (12 * HOUR_US, 9.0, 12.0), (DAY_US - 1, 7.0, 23.0)):
        rows.append(price("ethereum", NOW_US - (midnight_us + at_us), usd, total_volume=volume, market_cap=900.0))
    rows.append(price("ethereum", 2 * HOUR_US, 2.0, market_cap=1000.0, price_change_pct_24h=5.0))
    rows.append(price("tether", 5 * HOUR_US, 1.0))
    rows.append(price("tether", 3 * HOUR_US, 1.0, market_cap=None, price_change_pct_24h=None))
    rows.append(price("dogecoin", 2 * DAY_US, 0.1))  # stale: no longer "latest"
    sink.write(rows)
    return day


def test_every_price_view_exists_with_postgresqls_columns(sink: SqliteSink, db_path: Path) -> None:
    columns = {name: [c[1] for c in view(db_path, f"PRAGMA table_info({name})")] for name in PRICE_VIEWS}
    assert columns == {
        "price_latest": ["source", "coin_id", "symbol", "ts", "price_usd", "market_cap", "market_cap_rank",
                         "total_volume", "high_24h", "low_24h", "price_change_24h", "price_change_pct_24h",
                         "circulating_supply"],
        "price_volatility": ["source", "coin_id", "symbol", "ts", "returns_24h", "volatility_24h", "volatility_7d",
                             "volatility_30d", "volatility_24h_annualized", "volatility_7d_annualized",
                             "volatility_30d_annualized"],
        "price_daily": ["source", "coin_id", "day", "symbol", "open", "high", "low", "close", "mean", "samples",
                        "market_cap", "total_volume"],
        "price_comparisons": ["source", "coin_id", "symbol", "ts", "price_usd", "market_cap", "market_cap_rank",
                              "market_cap_share", "price_change_pct_24h", "change_rank_24h", "price_btc",
                              "change_vs_btc_pct_24h"],
        "price_roi": ["source", "coin_id", "symbol", "ts", "price_usd", "roi_24h", "roi_7d", "roi_30d", "roi_90d",
                      "roi_365d"],
    }
    for name in PRICE_VIEWS:
        assert view(db_path, f"SELECT * FROM {name}") == [], name  # and an empty table gives no row


def test_price_latest_is_each_coins_last_sample_of_the_last_day(priced: dt.date, db_path: Path) -> None:
    assert view(db_path, "SELECT coin_id, symbol, ts, price_usd, market_cap FROM price_latest ORDER BY coin_id") == [
        ("bitcoin", "BIT", NOW_US - HOUR_US, 8.0, 3000.0),
        ("ethereum", "ETH", NOW_US - 2 * HOUR_US, 2.0, 1000.0),
        ("tether", "TET", NOW_US - 3 * HOUR_US, 1.0, None),
    ]


def test_price_volatility_is_the_sample_deviation_of_log_returns(priced: dt.date, db_path: Path) -> None:
    ln2 = math.log(2)
    year_s = 365.25 * 86400
    (btc,) = view(db_path, "SELECT symbol, ts, returns_24h, volatility_24h, volatility_7d, volatility_30d,"
                           " volatility_24h_annualized, volatility_7d_annualized, volatility_30d_annualized"
                           " FROM price_volatility WHERE coin_id = 'bitcoin'")
    symbol, ts, returns_24h, v24, v7, v30, a24, a7, a30 = btc
    assert (symbol, ts, returns_24h) == ("BIT", NOW_US - HOUR_US, 4)
    # 24 h: ln2 x (1, 1, 0, 1); mean 3/4; deviations (1, 1, -3, 1)/4, squares 12/16, over 3: 1/4
    assert v24 == pytest.approx(ln2 / 2, rel=1e-12)
    # 7 d: ln2 x (1, 1, 1, 0, 1); mean 4/5; deviations (1, 1, 1, -4, 1)/5, squares 20/25, over 4: 1/5
    assert v7 == pytest.approx(math.sqrt(1 / 5) * ln2, rel=1e-12)
    # 30 d: ln2 x (0, 1, 1, 1, 0, 1); mean 2/3; deviations (-2, 1, 1, 1, -2, 1)/3, squares 12/9, over 5: 4/15
    assert v30 == pytest.approx(math.sqrt(4 / 15) * ln2, rel=1e-12)
    # annualized by sqrt(samples a year); mean spacings: 6 h; (167 + 4 x 6)/5 h; (48 + 167 + 4 x 6)/6 h
    assert a24 == pytest.approx(ln2 / 2 * math.sqrt(year_s / (6 * 3600)), rel=1e-12)
    assert a7 == pytest.approx(math.sqrt(1 / 5) * ln2 * math.sqrt(year_s / (191 / 5 * 3600)), rel=1e-12)
    assert a30 == pytest.approx(math.sqrt(4 / 15) * ln2 * math.sqrt(year_s / (239 / 6 * 3600)), rel=1e-12)
    # One return: counted, but no deviation yet (stddev_samp is NULL for a single value).
    assert view(db_path, "SELECT returns_24h, volatility_24h, volatility_30d, volatility_24h_annualized"
                         " FROM price_volatility WHERE coin_id = 'tether'") == [(1, None, None, None)]
    # ethereum: ln(9/5), ln(7/9) three days ago, ln(2/7) now
    assert view(db_path, "SELECT returns_24h, volatility_24h, volatility_30d FROM price_volatility"
                         " WHERE coin_id = 'ethereum'") == [
        (1, None, pytest.approx(statistics.stdev([math.log(9 / 5), math.log(7 / 9), math.log(2 / 7)]), rel=1e-12)),
    ]
    # Every coin with a sample of the last 30 days has a row, dogecoin's single sample too.
    assert view(db_path, "SELECT returns_24h, volatility_30d FROM price_volatility WHERE coin_id = 'dogecoin'") == [
        (0, None),
    ]


def test_price_volatility_keeps_its_digits_when_returns_hardly_vary(sink: SqliteSink, db_path: Path) -> None:
    """Returns of 0.1 +- 2e-9: the one-pass sqrt(avg(x²) - avg(x)²) would cancel to noise (or NULL)."""
    prices = [100.0 * math.exp(0.1 * i) * (1 + 1e-9 * (-1) ** i) for i in range(12)]
    sink.write([price("steady", (12 - i) * HOUR_US, usd) for i, usd in enumerate(prices)])
    returns = [math.log(b / a) for a, b in zip(prices, prices[1:])]
    ((v24, v30),) = view(db_path, "SELECT volatility_24h, volatility_30d FROM price_volatility")
    assert v24 == v30 == pytest.approx(statistics.stdev(returns), rel=1e-6)
    assert 1e-9 < v24 < 1e-8


def test_price_daily_aggregates_each_utc_day(priced: dt.date, db_path: Path) -> None:
    assert view(db_path, "SELECT day, symbol, open, high, low, close, mean, samples, market_cap, total_volume"
                         " FROM price_daily WHERE coin_id = 'ethereum' AND day = ?", (priced.isoformat(),)) == [
        (priced.isoformat(), "ETH", 5.0, 9.0, 5.0, 7.0, 7.0, 3, 900.0, 23.0),
    ]
    # Every sample counts, even one without a price (a day of only that one has no open, high, ...).
    assert view(db_path, "SELECT sum(samples) FROM price_daily WHERE coin_id = 'bitcoin'") == [(len(BTC_PATH) + 1,)]
    assert view(db_path, "SELECT open, high, low, close, mean, samples FROM price_daily"
                         " WHERE coin_id = 'bitcoin' AND day = date(?, 'unixepoch')",
                ((NOW_US - 35 * DAY_US) // 1_000_000,)) == [(None, None, None, None, None, 1)]


def test_price_comparisons_against_the_market_and_bitcoin(priced: dt.date, db_path: Path) -> None:
    assert view(db_path, "SELECT coin_id, market_cap_share, change_rank_24h, price_btc, change_vs_btc_pct_24h"
                         " FROM price_comparisons ORDER BY coin_id") == [
        ("bitcoin", 0.75, 2, 1.0, 0.0),
        ("ethereum", 0.25, 1, 0.25, 3.0),
        ("tether", None, 3, 0.125, None),  # no 24 h change ranks last, as NULLS LAST does in PostgreSQL
    ]


def test_price_roi_is_against_the_last_price_at_or_before_each_window(priced: dt.date, db_path: Path) -> None:
    # bitcoin is at 8.0 an hour ago. 24 h before that: 1.0; 7 days: 0.5 (8 days ago); 30 days: the
    # sample of 35 days ago, which has no price, so NULL as in PostgreSQL; 90 days: 4.0; 365 days: 2.0.
    assert view(db_path, "SELECT roi_24h, roi_7d, roi_30d, roi_90d, roi_365d FROM price_roi"
                         " WHERE coin_id = 'bitcoin'") == [(7.0, 15.0, None, 1.0, 3.0)]
    # ethereum's history starts three days ago: its last sample then (7.0 at 23:59:59.999999) is the
    # 24 h reference, and nothing reaches back 7 days
    assert view(db_path, "SELECT roi_24h, roi_7d FROM price_roi WHERE coin_id = 'ethereum'") == [
        (pytest.approx(2 / 7 - 1, rel=1e-12), None),
    ]


# --- the ingestion runbook's data-quality checks (views, as in PostgreSQL's migration 0003) -------------------


def test_dq_views_find_the_longest_silences_and_the_jumps_of_the_last_hour(sink: SqliteSink, db_path: Path) -> None:
    second = 1_000_000
    # Now, not NOW_US: that is read at collection, and a full run reaches this test minutes later.
    now_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)

    def tick(symbol: str, trade_id: int, age_us: int, price_: float, venue: str = "binance") -> Trade:
        return Trade(venue, symbol, trade_id, price_, 1.0, "buy", now_us - age_us, now_us - age_us)

    sink.write([
        tick("BTCUSDT", 1, 2 * HOUR_US, 100.0),  # older than the hour: in neither view
        tick("BTCUSDT", 2, 50 * 60 * second, 100.0),
        tick("BTCUSDT", 3, 49 * 60 * second, 120.0),  # +20 %, after 60 s
        tick("BTCUSDT", 4, 40 * 60 * second, 119.0),  # -0.8 %, after 9 min: the longest silence
        tick("BTCUSDT", 5, 39 * 60 * second, 100.0),  # -16 %
        tick("ETHUSDT", 1, 30 * 60 * second, 10.0),  # another series: no lag across symbols
        tick("ETHUSDT", 2, 29 * 60 * second, 10.5),
        tick("BTCUSDT", 6, 30 * 60 * second, 300.0, venue="bybit"),  # and none across venues
    ])
    gaps = view(db_path, "SELECT venue, symbol, ts, next_ts, gap FROM dq_tick_gaps")
    assert [(v, s, gap // second) for v, s, _, _, gap in gaps] == [
        ("binance", "BTCUSDT", 540), ("binance", "BTCUSDT", 60), ("binance", "BTCUSDT", 60), ("binance", "ETHUSDT", 60),
    ]
    assert all(next_ts - ts == gap for _, _, ts, next_ts, gap in gaps)
    outliers = view(db_path, "SELECT symbol, trade_id, price, prev_price, round(change, 4) FROM dq_price_outliers")
    assert outliers == [("BTCUSDT", 5, 100.0, 119.0, round(100 / 119 - 1, 4)), ("BTCUSDT", 3, 120.0, 100.0, 0.2)]
