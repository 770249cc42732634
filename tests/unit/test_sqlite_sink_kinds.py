"""SqliteSink and the record kinds stored by declaration (ingestd/sinks/tables.py): derivatives, DEX
metrics, on-chain flows, prices, prediction-market books and trades, whale trades."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import msgspec
import pytest

from ingestd.model import Checkpoint, DexMetric, OnchainFlow, PredictionBook, Trade
from ingestd.sinks import sqlite as sqlite_module
from ingestd.sinks import tables
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
    assert sink.counts()["ticks"] == 0 and sink.counts()["assets"] == 0
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
        assert reader.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (2,)


def test_read_helpers_refuse_unknown_tables(sink: SqliteSink) -> None:
    with pytest.raises(ValueError):
        sink.counts(["ticks; DROP TABLE ticks"])
    with pytest.raises(ValueError):
        sink.records(Trade)
    assert isinstance(sink.records(DexMetric), list) and isinstance(sink.records(OnchainFlow), list)
    assert sink.records(PredictionBook) == []
