"""SqliteSink against real database files: idempotency, checkpoints, assets, concurrent readers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.model import BookTop, Checkpoint, Trade, spread_bps
from ingestd.sinks import sqlite as sqlite_module
from ingestd.sinks.base import SinkError
from ingestd.sinks.sqlite import SCHEMA_VERSION, SqliteSink
from ingestd.stats import StatsRegistry

T0 = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z


def trade(trade_id: int, symbol: str = "BTCUSDT", venue: str = "binance") -> Trade:
    return Trade(venue, symbol, trade_id, 65_000.0 + trade_id, 0.5, "buy", T0 + trade_id, T0 + trade_id + 800)


def book(update_id: int, symbol: str = "BTCUSDT", venue: str = "binance") -> BookTop:
    bids = [(100.0 - i * 0.5, 1.0 + i) for i in range(5)]
    asks = [(100.5 + i * 0.5, 2.0 + i) for i in range(5)]
    return BookTop(
        venue, symbol, update_id, T0, T0 + 500, bids[0][0], bids[0][1], asks[0][0], asks[0][1],
        spread_bps(bids[0][0], asks[0][0]), bids, asks,
    )


def counters(stats: StatsRegistry, name: str = "local") -> tuple[int, int, int]:
    c = stats.counters
    return c[f"sink.{name}.rows_written"], c[f"sink.{name}.duplicates_skipped"], c[f"sink.{name}.batches"]


@pytest.fixture
def stats() -> StatsRegistry:
    return StatsRegistry("test")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ingestd.sqlite"  # the sink creates the missing directory


@pytest.fixture
def sink(db_path: Path, stats: StatsRegistry):
    s = SqliteSink("local", db_path, stats=stats)
    s.open()
    yield s
    s.close()


def test_same_batch_twice_is_stored_once(sink: SqliteSink, stats: StatsRegistry) -> None:
    batch = [trade(1), trade(2), book(10), trade(3), Checkpoint("binance", "BTCUSDT", 3)]
    sink.write(batch)
    sink.write(batch)
    assert sink.trade_ids("binance", "BTCUSDT") == [1, 2, 3]
    assert sink.counts() == {"assets": 1, "ticks": 3, "books": 1, "checkpoints": 1}
    assert counters(stats) == (4, 4, 2)


def test_one_stored_row_does_not_discard_the_rest_of_the_batch(sink: SqliteSink, stats: StatsRegistry) -> None:
    sink.write([trade(5)])
    sink.write([trade(i) for i in range(1, 11)])
    assert sink.trade_ids("binance", "BTCUSDT") == list(range(1, 11))
    assert counters(stats) == (10, 1, 2)


@pytest.mark.parametrize("size", [1, 2, 3, 1023, 1024, 1025, 2048, 2049, 5000])
def test_batches_of_any_size_straddling_statements_store_each_row_once(
    sink: SqliteSink, stats: StatsRegistry, size: int
) -> None:
    sink.write([trade(size - 1)])  # a duplicate where one statement may end
    sink.write([trade(i) for i in range(size)] + [trade(0)])  # and one last, copied to pad the last statement
    assert sink.trade_ids("binance", "BTCUSDT") == list(range(size))
    assert counters(stats)[:2] == (size, 2)


def test_a_low_variable_limit_makes_smaller_statements(sink: SqliteSink) -> None:
    sink._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # statements of 8 tick rows, 4 book rows
    sink.write([trade(i) for i in range(50)] + [book(i) for i in range(20)])
    assert sink.counts()["ticks"] == 50 and sink.counts()["books"] == 20


def test_rows_are_stored_verbatim(sink: SqliteSink, db_path: Path) -> None:
    sink.write([trade(7), book(9)])
    with sqlite3.connect(db_path) as reader:
        tick = reader.execute("SELECT venue, symbol, trade_id, ts, price, qty, side, recv_ts FROM ticks").fetchone()
        bids, asks = reader.execute("SELECT bids, asks FROM books").fetchone()
    t = trade(7)
    assert tick == (t.venue, t.symbol, t.trade_id, t.ts_us, t.price, t.qty, t.side, t.recv_us)
    assert bids == "[[100.0,1.0],[99.5,2.0],[99.0,3.0],[98.5,4.0],[98.0,5.0]]"
    assert asks.startswith("[[100.5,2.0],")


def test_latest_book_round_trips(sink: SqliteSink) -> None:
    assert sink.latest_book("binance", "BTCUSDT") is None
    sink.write([book(12), book(30), book(20), book(99, symbol="ETHUSDT")])
    assert sink.latest_book("binance", "BTCUSDT") == book(30)


def test_checkpoint_keeps_the_highest_trade_id(sink: SqliteSink) -> None:
    sink.write([Checkpoint("binance", "BTCUSDT", i) for i in (7, 9, 8)])
    assert sink.resume_points("binance") == {"BTCUSDT": 9}
    sink.write([Checkpoint("binance", "BTCUSDT", 5)])  # a replayed old batch must not rewind resume
    assert sink.resume_points("binance") == {"BTCUSDT": 9}
    sink.write([Checkpoint("binance", "BTCUSDT", 150)])
    assert sink.resume_points("binance") == {"BTCUSDT": 150}


def test_resume_points_are_per_venue_and_survive_reopening(sink: SqliteSink, db_path: Path) -> None:
    sink.write(
        [
            trade(41), Checkpoint("binance", "BTCUSDT", 41),
            trade(3, "ETHUSDT"), Checkpoint("binance", "ETHUSDT", 3),
            trade(8, venue="bybit"), Checkpoint("bybit", "BTCUSDT", 8),
        ]
    )
    sink.close()
    reopened = SqliteSink("again", db_path)
    reopened.open()
    try:
        assert reopened.resume_points("binance") == {"BTCUSDT": 41, "ETHUSDT": 3}
        assert reopened.resume_points("bybit") == {"BTCUSDT": 8}
        assert reopened.resume_points("kraken") == {}
        assert reopened.counts()["ticks"] == 3
    finally:
        reopened.close()


def test_unknown_symbols_are_registered_once(sink: SqliteSink, db_path: Path) -> None:
    sink.write([trade(1, "BTCUSDT"), trade(1, "ETHUSDT"), book(1, "SOLUSDT")])
    sink.write([trade(2, "BTCUSDT"), trade(2, "ETHUSDT")])
    with sqlite3.connect(db_path) as reader:
        assets = dict(reader.execute("SELECT symbol, asset_id FROM assets"))
        linked = reader.execute(
            "SELECT t.symbol, a.symbol FROM ticks t JOIN assets a USING (asset_id)"
            " UNION ALL SELECT b.symbol, a.symbol FROM books b JOIN assets a USING (asset_id)"
        ).fetchall()
    assert sorted(assets) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert len(linked) == 5 and all(own == registered for own, registered in linked)


def test_an_asset_added_by_an_operator_is_used_not_duplicated(sink: SqliteSink, db_path: Path) -> None:
    with sqlite3.connect(db_path) as operator:  # the runbook's "Adding New Assets", while we run
        operator.execute("INSERT INTO assets (symbol, chain, sector) VALUES ('MATICUSDT', 'polygon', 'Layer1')")
        (asset_id,) = operator.execute("SELECT asset_id FROM assets WHERE symbol = 'MATICUSDT'").fetchone()
    sink.write([trade(1, "MATICUSDT")])
    with sqlite3.connect(db_path) as reader:
        assert reader.execute("SELECT asset_id FROM ticks").fetchone() == (asset_id,)
        assert reader.execute("SELECT count(*), max(sector) FROM assets").fetchone() == (1, "Layer1")


ODD_SYMBOLS = ["BTC'USDT", 'ETH"USDT', "X; DROP TABLE ticks; --", "比特币/USDT", "🚀MOON", "a\nb", "%_*"]


@pytest.mark.parametrize("symbol", ODD_SYMBOLS)
def test_odd_symbols_are_stored_verbatim(sink: SqliteSink, symbol: str) -> None:
    sink.write([trade(1, symbol), trade(2, symbol), book(3, symbol), Checkpoint("binance", symbol, 2)])
    assert sink.trade_ids("binance", symbol) == [1, 2]
    assert sink.latest_book("binance", symbol) == book(3, symbol)
    assert sink.resume_points("binance") == {symbol: 2}
    assert sink.counts() == {"assets": 1, "ticks": 2, "books": 1, "checkpoints": 1}


def test_readable_views_show_utc_times(sink: SqliteSink, db_path: Path) -> None:
    sink.write([trade(0), book(1)])
    with sqlite3.connect(db_path) as reader:
        assert reader.execute("SELECT time_utc, recv_lag_ms FROM ticks_readable").fetchone() == (
            "2023-11-14T22:13:20.123Z",
            0.8,
        )
        assert reader.execute("SELECT time_utc, spread_bps > 0 FROM books_readable").fetchone() == (
            "2023-11-14T22:13:20.123Z",
            1,
        )


def test_database_settings(sink: SqliteSink, db_path: Path) -> None:
    with sqlite3.connect(db_path) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert reader.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert sink._conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert sink._conn.execute("PRAGMA busy_timeout").fetchone() == (int(sqlite_module.BUSY_TIMEOUT_S * 1000),)


def test_synchronous_is_validated_and_applied(db_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteSink("local", db_path, synchronous="sometimes")
    full = SqliteSink("local", db_path, synchronous="FULL")
    full.open()
    try:
        assert full._conn.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        full.close()


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as future:
        future.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        SqliteSink("local", db_path).open()


def test_failed_write_rolls_back_the_whole_batch_and_a_retry_stores_it(sink: SqliteSink, db_path: Path) -> None:
    with sqlite3.connect(db_path) as saboteur:
        saboteur.execute(
            "CREATE TRIGGER fail_666 BEFORE INSERT ON ticks WHEN NEW.trade_id = 666"
            " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    batch = [trade(1), trade(666), trade(2), Checkpoint("binance", "BTCUSDT", 666)]
    with pytest.raises(SinkError, match="disk on fire"):
        sink.write(batch)
    assert sink.counts()["ticks"] == 0 and sink.resume_points("binance") == {}
    with sqlite3.connect(db_path) as saboteur:
        saboteur.execute("DROP TRIGGER fail_666")
    sink.write(batch)  # the connection is still usable: no transaction was left open
    assert sink.trade_ids("binance", "BTCUSDT") == [1, 2, 666]
    assert sink.resume_points("binance") == {"BTCUSDT": 666}


def test_a_locked_database_is_a_sink_error(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_S", 0.05)
    sink = SqliteSink("local", db_path)
    sink.open()
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(SinkError, match="locked"):
            sink.write([trade(1)])
        other.execute("ROLLBACK")
        sink.write([trade(1)])
        assert sink.trade_ids("binance", "BTCUSDT") == [1]
    finally:
        other.close()
        sink.close()


def test_misuse_is_reported(db_path: Path, sink: SqliteSink) -> None:
    with pytest.raises(SinkError, match="not open"):
        SqliteSink("local", db_path).write([trade(1)])
    with pytest.raises(TypeError):
        sink.write([trade(1), "not a record"])  # type: ignore[list-item]
    assert sink.counts()["ticks"] == 0
    sink.write([])  # nothing to do, no empty transaction
    sink.close()
    sink.close()  # idempotent, never raises


def test_another_connection_reads_whole_batches_while_writing(sink: SqliteSink, db_path: Path) -> None:
    batches, batch_size = 40, 500
    failures: list[BaseException] = []

    def write_all() -> None:
        try:
            for b in range(batches):
                sink.write([trade(b * batch_size + i) for i in range(batch_size)])
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    writer = threading.Thread(target=write_all)
    seen: list[int] = []
    reader = sqlite3.connect(db_path, timeout=0)  # no busy wait: a WAL reader must never need one
    try:
        writer.start()
        while writer.is_alive():
            seen.append(reader.execute("SELECT count(*) FROM ticks").fetchone()[0])
        writer.join()
        seen.append(reader.execute("SELECT count(*) FROM ticks").fetchone()[0])
    finally:
        reader.close()
    assert not failures
    assert seen == sorted(seen), "a reader saw rows disappear"
    assert all(n % batch_size == 0 for n in seen), "a reader saw part of a batch"
    assert seen[-1] == batches * batch_size
    assert len(set(seen)) > 2, "the reader never overlapped the writer"


_WRITE_UNTIL_KILLED = """
import sys
from ingestd.model import Checkpoint, Trade
from ingestd.sinks.sqlite import SqliteSink

sink = SqliteSink("local", sys.argv[1])
sink.open()
for b in range(1_000_000):
    batch = [Trade("binance", "BTCUSDT", b * 100 + i, 1.0, 1.0, "buy", 0, 0) for i in range(100)]
    sink.write([*batch, Checkpoint("binance", "BTCUSDT", b * 100 + 99)])
    print(b, flush=True)  # batch b is committed
"""


def test_committed_batches_survive_kill_9(db_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    db_path.parent.mkdir(parents=True)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITE_UNTIL_KILLED, str(db_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in writer.stdout:
            if int(line) >= 20:
                break
        writer.send_signal(signal.SIGKILL)  # mid-stream, most likely inside a transaction
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    sink = SqliteSink("local", db_path)
    sink.open()
    try:
        ids = sink.trade_ids("binance", "BTCUSDT")
        assert len(ids) >= 21 * 100, "a batch reported committed was lost"
        assert ids == list(range(len(ids))), "a batch was stored in part"
        assert sink.resume_points("binance") == {"BTCUSDT": ids[-1]}, "checkpoint and data disagree"
    finally:
        sink.close()


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.sampled_from(["A", "B"]), st.integers(0, 30)), max_size=40),
        min_size=1,
        max_size=6,
    )
)
def test_any_sequence_of_overlapping_batches_stores_each_key_once(batches: list[list[tuple[str, int]]]) -> None:
    stats = StatsRegistry("test")
    with tempfile.TemporaryDirectory() as tmp:
        sink = SqliteSink("local", Path(tmp) / "db.sqlite", stats=stats)
        sink.open()
        try:
            for batch in batches:
                sink.write([trade(i, symbol) for symbol, i in batch])
            for symbol in ("A", "B"):
                expected = sorted({i for batch in batches for s, i in batch if s == symbol})
                assert sink.trade_ids("binance", symbol) == expected
        finally:
            sink.close()
    written, skipped, _ = counters(stats)
    assert written == len({key for batch in batches for key in batch})
    assert written + skipped == sum(len(batch) for batch in batches)
