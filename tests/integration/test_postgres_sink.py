"""PostgresSink against a real PostgreSQL server (tests/pg_server.py): idempotency, checkpoints,
assets, hostile values, outages, partitions and retention."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import psycopg
import pytest

from ingestd.config import PostgresSinkConfig
from ingestd.db import run_maintenance
from ingestd.model import BookTop, Checkpoint, Trade, spread_bps
from ingestd.sinks import build_sink
from ingestd.sinks.base import SinkError
from ingestd.sinks.postgres import PostgresSink
from ingestd.stats import StatsRegistry
from tests.pg_server import Database, pg_database, pg_server  # noqa: F401  (fixtures)

DAY_US = 86_400_000_000
NOW_US = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)
T0 = NOW_US - 600_000_000  # ten minutes ago: inside today's or yesterday's partition, and the dq views' hour


def trade(trade_id: int, symbol: str = "BTCUSDT", venue: str = "binance", *, ts: int | None = None,
          price: float | None = None, side: str = "buy") -> Trade:
    ts = T0 + trade_id * 1000 if ts is None else ts
    return Trade(venue, symbol, trade_id, 65_000.0 + trade_id if price is None else price, 0.5, side, ts, ts + 800)


def book(update_id: int, symbol: str = "BTCUSDT", venue: str = "binance") -> BookTop:
    bids = [(100.0 - i * 0.5, 1.0 + i) for i in range(5)]
    asks = [(100.5 + i * 0.5, 2.0 + i) for i in range(5)]
    return BookTop(
        venue, symbol, update_id, T0 + update_id, T0 + update_id + 500, bids[0][0], bids[0][1], asks[0][0],
        asks[0][1], spread_bps(bids[0][0], asks[0][0]), bids, asks,
    )


def config(db: Database, **overrides) -> PostgresSinkConfig:
    return PostgresSinkConfig(
        name="pg", type="postgres", host=db.host, port=db.port, dbname=db.dbname, user=db.user,
        connect_timeout_s=2.0, **overrides,
    )


def counters(stats: StatsRegistry, name: str = "pg") -> tuple[int, int, int]:
    c = stats.counters
    return c[f"sink.{name}.rows_written"], c[f"sink.{name}.duplicates_skipped"], c[f"sink.{name}.batches"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
    """Run one query on the test database, from a connection of its own."""
    conn = psycopg.connect(pg_database.conninfo, autocommit=True)

    def run(query: str, params: tuple = ()) -> list[tuple]:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    yield run
    conn.close()


# --- idempotency ---------------------------------------------------------------------------------


def test_same_batch_twice_is_stored_once(sink: PostgresSink, stats: StatsRegistry) -> None:
    batch = [trade(1), trade(2), book(10), trade(3), Checkpoint("binance", "BTCUSDT", 3)]
    sink.write(batch)
    sink.write(batch)
    assert sink.trade_ids("binance", "BTCUSDT") == [1, 2, 3]
    assert sink.update_ids("binance", "BTCUSDT") == [10]
    assert sink.counts() == {"assets": 1, "ticks": 3, "books": 1, "checkpoints": 1}
    assert counters(stats) == (4, 4, 2)


def test_one_stored_row_does_not_discard_the_rest_of_the_batch(sink: PostgresSink, stats: StatsRegistry) -> None:
    sink.write([trade(5)])
    sink.write([trade(i) for i in range(1, 11)])
    assert sink.trade_ids("binance", "BTCUSDT") == list(range(1, 11))
    assert counters(stats) == (10, 1, 2)
    sink.write([trade(i) for i in range(11, 21)])  # and the next batch of new rows is stored too
    assert sink.trade_ids("binance", "BTCUSDT") == list(range(1, 21))


def test_a_duplicate_inside_one_batch_is_stored_once(sink: PostgresSink, stats: StatsRegistry) -> None:
    sink.write([trade(1), trade(2), trade(1), book(7), book(7)])
    assert sink.trade_ids("binance", "BTCUSDT") == [1, 2]
    assert sink.update_ids("binance", "BTCUSDT") == [7]
    assert counters(stats) == (3, 2, 1)


@pytest.mark.parametrize("size", [1, 999, 5000])
def test_batches_of_any_size_store_each_row_once(sink: PostgresSink, size: int) -> None:
    batch = [trade(i, symbol=f"S{i % 7}") for i in range(size)]
    sink.write(batch)
    sink.write(batch[: size // 2 + 1])
    assert sink.counts()["ticks"] == size


def test_two_sinks_writing_the_same_rows_at_once_store_each_once(pg_database: Database) -> None:
    sinks = [PostgresSink(f"pg{i}", config(pg_database), stats=StatsRegistry("t")) for i in range(2)]
    for s in sinks:
        s.open()
    batches = [[trade(i) for i in range(k, k + 500)] for k in range(0, 5000, 250)]  # overlapping halves
    errors: list[BaseException] = []

    def work(s: PostgresSink) -> None:
        try:
            for b in batches:
                s.write(b)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sinks[0].trade_ids("binance", "BTCUSDT") == list(range(0, 5000 + 250))
    for s in sinks:
        s.close()


def test_rows_are_stored_exactly(sink: PostgresSink, sql) -> None:
    t = Trade("binance", "ETHUSDT", 2**62, 3456.789012345678, 1e-8, "sell", 1_700_000_000_123_457, 1_700_000_000_999_999)
    b = book(42, symbol="ETHUSDT")
    sink.write([t, b])
    row = sql(
        "SELECT venue, symbol, trade_id, price, qty, side, (extract(epoch FROM ts) * 1e6)::int8,"
        " (extract(epoch FROM recv_ts) * 1e6)::int8, asset_id = (SELECT asset_id FROM assets WHERE symbol = 'ETHUSDT')"
        " FROM ticks"
    )
    assert row == [("binance", "ETHUSDT", 2**62, t.price, t.qty, "sell", t.ts_us, t.recv_us, True)]
    assert sink.latest_book("binance", "ETHUSDT") == b
    assert sql("SELECT jsonb_typeof(bids), bids -> 0 ->> 0 FROM books") == [("array", "100.0")]


# --- checkpoints and resume -----------------------------------------------------------------------


def test_checkpoints_only_move_forward(sink: PostgresSink) -> None:
    sink.write([trade(1), Checkpoint("binance", "BTCUSDT", 10)])
    sink.write([Checkpoint("binance", "BTCUSDT", 5)])  # a replayed old batch
    assert sink.resume_points("binance") == {"BTCUSDT": 10}
    sink.write([Checkpoint("binance", "BTCUSDT", 12), Checkpoint("binance", "BTCUSDT", 20),
                Checkpoint("binance", "BTCUSDT", 15)])
    assert sink.resume_points("binance") == {"BTCUSDT": 20}


def test_resume_points_are_per_venue(sink: PostgresSink) -> None:
    sink.write([
        Checkpoint("binance", "BTCUSDT", 100), Checkpoint("binance", "ETHUSDT", 7),
        Checkpoint("bybit", "BTCUSDT", 55),
    ])
    assert sink.resume_points("binance") == {"BTCUSDT": 100, "ETHUSDT": 7}
    assert sink.resume_points("bybit") == {"BTCUSDT": 55}
    assert sink.resume_points("kraken") == {}


def test_checkpoint_commits_with_the_trades_before_it(pg_database: Database, sql) -> None:
    """A batch that fails leaves neither its trades nor its checkpoint behind."""
    s = PostgresSink("pg", config(pg_database))
    s.open()
    try:
        sql("ALTER TABLE checkpoints ADD CONSTRAINT no_big CHECK (trade_id < 1000)")
        with pytest.raises(SinkError):
            s.write([trade(1), trade(2), Checkpoint("binance", "BTCUSDT", 5000)])
        assert s.trade_ids("binance", "BTCUSDT") == []
        assert s.resume_points("binance") == {}
        sql("ALTER TABLE checkpoints DROP CONSTRAINT no_big")
        s.write([trade(1), trade(2), Checkpoint("binance", "BTCUSDT", 5000)])  # the retry stores all of it
        assert s.trade_ids("binance", "BTCUSDT") == [1, 2]
        assert s.resume_points("binance") == {"BTCUSDT": 5000}
    finally:
        s.close()


# --- assets -------------------------------------------------------------------------------------


def test_new_symbols_are_registered_as_assets(sink: PostgresSink, sql) -> None:
    sql("INSERT INTO assets (symbol, chain, sector, risk_tags) VALUES ('SOLUSDT', 'solana', 'Layer1', ARRAY['mid-cap'])")
    sink.write([trade(1, "BTCUSDT"), trade(1, "SOLUSDT"), book(3, "ETHUSDT")])
    assets = dict(sql("SELECT symbol, asset_id FROM assets"))
    assert set(assets) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert dict(sql("SELECT symbol, asset_id FROM ticks")) == {s: assets[s] for s in ("BTCUSDT", "SOLUSDT")}
    assert sql("SELECT asset_id FROM books") == [(assets["ETHUSDT"],)]
    assert sql("SELECT sector, risk_tags FROM assets WHERE symbol = 'SOLUSDT'") == [("Layer1", ["mid-cap"])]
    sink.write([trade(2, "BTCUSDT")])
    assert sql("SELECT count(*) FROM assets") == [(3,)]


def test_asset_ids_come_from_the_database_not_a_stale_cache(pg_database: Database, sql) -> None:
    first = PostgresSink("a", config(pg_database))
    second = PostgresSink("b", config(pg_database))
    first.open()
    second.open()
    try:
        first.write([trade(1, "XRPUSDT")])
        second.write([trade(2, "XRPUSDT")])  # registered by the other sink meanwhile
        assert sql("SELECT DISTINCT asset_id FROM ticks") == sql("SELECT asset_id FROM assets WHERE symbol = 'XRPUSDT'")
    finally:
        first.close()
        second.close()


# --- hostile values --------------------------------------------------------------------------------

CRAFTED = [
    "'); DROP TABLE ticks;--",
    "O'Brien\"s; SELECT 1",
    "semi;colon",
    "back\\slash\\N",
    "tab\tnew\nline\rcr",
    "ÄÖÜ-€-中文-🚀",
    "%s %(x)s {} $1",
    " ",
    "",
]


def test_crafted_symbols_are_stored_verbatim(sink: PostgresSink, sql) -> None:
    batch = [trade(i, symbol=s, venue=s or "v") for i, s in enumerate(CRAFTED)]
    batch += [book(i, symbol=s) for i, s in enumerate(CRAFTED)]
    batch += [Checkpoint(s or "v", s, i) for i, s in enumerate(CRAFTED)]
    sink.write(batch)
    assert sql("SELECT to_regclass('ticks') IS NOT NULL") == [(True,)]
    assert sorted(s for (s,) in sql("SELECT symbol FROM ticks")) == sorted(CRAFTED)
    assert sorted(s for (s,) in sql("SELECT symbol FROM books")) == sorted(CRAFTED)
    assert sorted(s for (s,) in sql("SELECT symbol FROM assets")) == sorted(CRAFTED)
    for i, s in enumerate(CRAFTED):
        assert sink.trade_ids(s or "v", s) == [i]
        assert sink.resume_points(s or "v") == {s: i}
    assert sink.counts()["ticks"] == len(CRAFTED)


def test_a_nul_character_is_refused_with_a_reason_and_the_rest_is_stored(
    sink: PostgresSink, stats: StatsRegistry, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd.sinks.postgres")
    batch = [
        trade(1), trade(2, symbol="BAD\x00SYM"), trade(3, side="b\x00uy"), book(4, symbol="NUL\x00"), trade(5),
        Checkpoint("binance", "X\x00", 9), Checkpoint("binance", "BTCUSDT", 5),
    ]
    sink.write(batch)  # does not raise
    assert sink.trade_ids("binance", "BTCUSDT") == [1, 5]
    assert sink.counts() == {"assets": 1, "ticks": 2, "books": 0, "checkpoints": 1}
    assert sink.resume_points("binance") == {"BTCUSDT": 5}
    assert stats.counters["sink.pg.records_refused"] == 4
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 4
    assert all("NUL character" in m for m in refusals)
    assert any("symbol='BAD\\x00SYM'" in m for m in refusals)
    assert any("side contains a NUL" in m for m in refusals)
    sink.write([trade(6)])  # and the sink keeps working
    assert sink.trade_ids("binance", "BTCUSDT") == [1, 5, 6]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (Trade("binance", "BTCUSDT", 2**63, 1.0, 1.0, "buy", T0, T0), "not a 64-bit integer"),
        (Trade("binance", "BTCUSDT", 7, 1.0, 1.0, "buy", 10**18, T0), "not a time between 1970 and 9999"),
        (Trade("binance", "BTCUSDT", 7, 1.0, 1.0, "buy", T0, 10**19), "not a time between 1970 and 9999"),
        (Trade("binance", "BTC\ud800", 7, 1.0, 1.0, "buy", T0, T0), "lone surrogate"),
        (Trade("binance", "BTCUSDT", 7, 10**400, 1.0, "buy", T0, T0), "not a number"),
    ],
    ids=["id-overflow", "ts-year-33658", "recv-beyond-bigint", "surrogate", "huge-int-price"],
)
def test_other_unstorable_values_are_refused(sink: PostgresSink, stats: StatsRegistry, caplog, bad, reason) -> None:
    caplog.set_level(logging.WARNING, logger="ingestd.sinks.postgres")
    sink.write([trade(1), bad, trade(2)])
    assert sink.trade_ids("binance", "BTCUSDT") == [1, 2]
    assert stats.counters["sink.pg.records_refused"] == 1
    assert any(reason in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_nan_and_infinity_are_stored(sink: PostgresSink, sql) -> None:
    sink.write([trade(1, price=float("nan")), trade(2, price=float("inf"))])
    assert sql("SELECT price::text FROM ticks ORDER BY trade_id") == [("NaN",), ("Infinity",)]


def test_a_record_of_the_wrong_type_is_a_bug_not_a_sink_error(sink: PostgresSink) -> None:
    with pytest.raises(TypeError):
        sink.write([trade(1), object()])  # type: ignore[list-item]
    sink.write([trade(2)])
    assert sink.trade_ids("binance", "BTCUSDT") == [2]


# --- outages --------------------------------------------------------------------------------------


@pytest.mark.parametrize("immediate", [False, True], ids=["fast-shutdown", "crash"])
def test_server_down_raises_sink_error_then_the_next_write_reconnects(
    pg_database: Database, stats: StatsRegistry, immediate: bool
) -> None:
    server = pg_database.server
    s = PostgresSink("pg", config(pg_database), stats=stats)
    s.open()
    try:
        s.write([trade(1), Checkpoint("binance", "BTCUSDT", 1)])
        server.stop(immediate=immediate)
        for _ in range(2):  # every write while it is down fails the same way, without sleeping
            with pytest.raises(SinkError):
                s.write([trade(2), Checkpoint("binance", "BTCUSDT", 2)])
        with pytest.raises(SinkError):
            s.resume_points("binance")
        server.start()
        s.write([trade(2), Checkpoint("binance", "BTCUSDT", 2)])  # the pipeline's retry of the same batch
        s.write([trade(3)])
        assert s.trade_ids("binance", "BTCUSDT") == [1, 2, 3]
        assert s.resume_points("binance") == {"BTCUSDT": 2}
    finally:
        server.start()
        s.close()


def test_open_fails_with_sink_error_when_the_server_is_unreachable(pg_database: Database) -> None:
    cfg = config(pg_database)
    from tests.pg_server import free_port

    s = PostgresSink("pg", PostgresSinkConfig(**{**cfg.__dict__, "port": free_port()}))
    with pytest.raises(SinkError, match="cannot connect"):
        s.open()
    with pytest.raises(SinkError, match="not open"):
        s.write([trade(1)])


def test_write_before_open_and_after_close_raises(pg_database: Database) -> None:
    s = PostgresSink("pg", config(pg_database))
    with pytest.raises(SinkError):
        s.write([trade(1)])
    s.open()
    s.close()
    s.close()  # idempotent
    with pytest.raises(SinkError):
        s.write([trade(1)])


# --- partitions, maintenance, retention ---------------------------------------------------------


def test_a_backfill_into_a_day_without_partition_creates_it(sink: PostgresSink, sql) -> None:
    old = NOW_US - 10 * DAY_US
    sink.write([trade(1, ts=old), trade(2, ts=old + 1), trade(3)])
    assert sink.trade_ids("binance", "BTCUSDT") == [1, 2, 3]
    day = dt.datetime.fromtimestamp(old / 1e6, dt.timezone.utc).date()
    assert sql("SELECT to_regclass(%s) IS NOT NULL", (f"ticks_p{day:%Y%m%d}",)) == [(True,)]


def test_a_partition_dropped_behind_the_sinks_back_is_recreated(sink: PostgresSink, sql) -> None:
    old = NOW_US - 5 * DAY_US
    sink.write([trade(1, ts=old)])
    day = dt.datetime.fromtimestamp(old / 1e6, dt.timezone.utc).date()
    sql(f"DROP TABLE ticks_p{day:%Y%m%d}")
    sink.write([trade(2, ts=old)])  # "no partition": the sink reloads what exists, creates it, retries
    assert sink.trade_ids("binance", "BTCUSDT") == [2]


def test_open_creates_partitions_ahead(sink: PostgresSink, sql) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    for table in ("ticks", "books", "derivatives", "dex_metrics", "onchain_flows", "prices", "prediction_books",
                  "prediction_trades", "whale_trades"):
        for ahead in range(3):
            name = f"{table}_p{today + dt.timedelta(days=ahead):%Y%m%d}"
            assert sql("SELECT to_regclass(%s) IS NOT NULL", (name,)) == [(True,)], name


def test_retention_drops_old_days_and_keeps_recent_ones(pg_database: Database, sql) -> None:
    s = PostgresSink("pg", config(pg_database, retention_days=30))
    s.open()
    try:
        s.write([trade(1, ts=NOW_US - 40 * DAY_US), trade(2, ts=NOW_US - 31 * DAY_US), trade(3, ts=NOW_US - 29 * DAY_US),
                 trade(4)])
        with psycopg.connect(pg_database.conninfo) as conn:
            report = run_maintenance(conn, 30)
        assert len(report.dropped) == 2 and all(name.startswith("ticks_p") for name in report.dropped)
        assert s.trade_ids("binance", "BTCUSDT") == [3, 4]
        with psycopg.connect(pg_database.conninfo) as conn:
            assert run_maintenance(conn, 30).dropped == []
            assert run_maintenance(conn, 0).dropped == []  # 0 keeps everything
        assert s.trade_ids("binance", "BTCUSDT") == [3, 4]
    finally:
        s.close()


def test_the_sink_runs_maintenance_at_most_once_an_hour(pg_database: Database, sql) -> None:
    clock = FakeClock()
    s = PostgresSink("pg", config(pg_database, retention_days=30), clock=clock)
    s.open()
    try:
        s.write([trade(1, ts=NOW_US - 40 * DAY_US), trade(2)])
        clock.now += 3599
        s.write([trade(3)])
        assert s.trade_ids("binance", "BTCUSDT") == [1, 2, 3]  # not yet
        clock.now += 1
        s.write([trade(4)])  # an hour after open: maintenance runs before this batch
        assert s.trade_ids("binance", "BTCUSDT") == [2, 3, 4]
    finally:
        s.close()


# --- wiring ---------------------------------------------------------------------------------------


def test_build_sink_makes_a_postgres_sink(pg_database: Database, tmp_path, stats: StatsRegistry) -> None:
    s = build_sink("pg", config(pg_database), state_dir=tmp_path, stats=stats)
    assert isinstance(s, PostgresSink)
    s.open()
    try:
        s.write([trade(1)])
        assert counters(stats) == (1, 0, 1)
    finally:
        s.close()


def test_the_connection_identifies_itself_and_hides_the_password(pg_database: Database, sql, caplog) -> None:
    from ingestd.secrets import Secret

    caplog.set_level(logging.DEBUG)
    s = PostgresSink("pg", config(pg_database, password=Secret("hunter2-secret")))
    s.open()  # trust auth ignores the password
    try:
        names = sql("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")
        assert ("ingestd",) in names
    finally:
        s.close()
    assert "hunter2-secret" not in caplog.text
    assert "hunter2-secret" not in repr(s.cfg)


def test_maintenance_gives_up_quickly_on_a_busy_table(pg_database: Database, monkeypatch) -> None:
    from ingestd.db import maintenance

    monkeypatch.setattr(maintenance, "LOCK_TIMEOUT", "200ms")
    with psycopg.connect(pg_database.conninfo) as setup:
        from ingestd.db import migrate

        migrate(setup)
    reader = psycopg.connect(pg_database.conninfo)
    try:
        reader.execute("LOCK TABLE books IN ACCESS SHARE MODE")  # a long report on books, mid-transaction
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=20)
        with psycopg.connect(pg_database.conninfo) as conn:
            report = run_maintenance(conn, 30, now=later)
        assert report.problems[0].startswith("books: create partitions: canceling statement due to lock timeout")
        assert report.problems[-1] == "remaining steps skipped until the next run"
        assert report.created == []  # books comes first (alphabetical): nothing else was tried
    finally:
        reader.close()
    with psycopg.connect(pg_database.conninfo) as conn:
        report = run_maintenance(conn, 30, now=later)  # the next run does it all
    assert report.problems == [] and len(report.created) == len(maintenance.TIME_SERIES_TABLES) * 3 == 9 * 3


def test_a_database_recreated_behind_the_sinks_back_gets_its_schema_and_fresh_asset_ids(
    pg_database: Database, sql
) -> None:
    s = PostgresSink("pg", config(pg_database))
    s.open()
    try:
        s.write([trade(1, "AAA"), trade(1, "BBB")])
        sql("DROP TABLE ticks, books, assets, checkpoints, schema_migrations CASCADE")
        sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'ingestd' AND datname = current_database()")
        with pytest.raises(SinkError):
            s.write([trade(2, "BBB")])  # the connection was cut
        s.write([trade(2, "BBB")])  # reconnects, migrates again, reloads asset ids
        assert s.trade_ids("binance", "BBB") == [2]
        assert sql("SELECT t.asset_id = a.asset_id FROM ticks t JOIN assets a USING (symbol)") == [(True,)]
    finally:
        s.close()
