"""Pieces of the PostgreSQL sink that need no server: record screening, checkpoint folding, the
migration file set, connection parameters."""

from __future__ import annotations

import datetime as dt
import sys
from types import SimpleNamespace

import pytest

from ingestd.config import PostgresSinkConfig
from ingestd.db import connect_params, describe_target
from ingestd.db.maintenance import MAX_DAY_NUMBER, EPOCH_DAY, partition_name
from ingestd.db.migrate import MigrationError, load_migrations, plan
from ingestd.model import BookTop, Checkpoint, Trade
from ingestd.secrets import Secret
from ingestd.sinks.postgres import MAX_TS_US, _checkpoint_arrays, describe_record, refusal_reason

T0 = 1_700_000_000_123_456


def trade(**overrides) -> Trade:
    fields = dict(venue="binance", symbol="BTCUSDT", trade_id=1, price=1.5, qty=2.0, side="buy", ts_us=T0, recv_us=T0)
    fields.update(overrides)
    return Trade(**fields)


def book(**overrides) -> BookTop:
    fields = dict(
        venue="binance", symbol="BTCUSDT", update_id=1, ts_us=T0, recv_us=T0, bid_px=1.0, bid_sz=1.0, ask_px=1.1,
        ask_sz=1.0, spread_bps=5.0, bids=[(1.0, 1.0)], asks=[(1.1, 1.0)],
    )
    fields.update(overrides)
    return BookTop(**fields)


@pytest.mark.parametrize(
    "record",
    [
        trade(), trade(side=None), trade(symbol="'); DROP TABLE ticks;--"), trade(price=float("nan")),
        trade(trade_id=-(2**63)), trade(ts_us=0), trade(ts_us=MAX_TS_US), book(), book(bids=[]),
        Checkpoint("binance", "ÄÖÜ🚀", 2**63 - 1),
    ],
)
def test_storable_records_pass_the_screening(record) -> None:
    assert refusal_reason(record) is None


@pytest.mark.parametrize(
    "record, reason",
    [
        (trade(symbol="A\x00B"), "symbol contains a NUL character"),
        (trade(venue="\x00"), "venue contains a NUL character"),
        (trade(side="b\x00"), "side contains a NUL character"),
        (trade(symbol="\udcff"), "lone surrogate"),
        (trade(symbol=5), "symbol is int, not text"),
        (trade(trade_id=2**63), "not a 64-bit integer"),
        (trade(trade_id="7"), "not a 64-bit integer"),
        (trade(ts_us=-1), "not a time between 1970 and 9999"),
        (trade(ts_us=MAX_TS_US + 1), "not a time between 1970 and 9999"),
        (trade(recv_us=1.5), "not a time"),
        (trade(price="1.5"), "price='1.5' is not a number"),
        (trade(qty=None), "qty=None is not a number"),
        (trade(price=10**400), "not a number"),
        (book(symbol="x\x00"), "symbol contains a NUL"),
        (book(bids=[("a", 1.0)]), "bids are not [price, size] pairs"),
        (book(asks=[(1.0,)]), "asks are not [price, size] pairs"),
        (Checkpoint("binance", "x\x00", 1), "symbol contains a NUL"),
        (Checkpoint("binance", "x", 2**64), "not a 64-bit integer"),
    ],
)
def test_unstorable_records_are_refused_with_a_reason(record, reason: str) -> None:
    assert reason in (refusal_reason(record) or "")


def test_screening_a_foreign_object_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        refusal_reason(object())  # type: ignore[arg-type]


def test_describe_record_escapes_and_bounds_what_it_logs() -> None:
    assert describe_record(trade(symbol="A\x00B")) == "trade venue='binance' symbol='A\\x00B' trade_id=1"
    assert describe_record(book(update_id=9)).endswith("update_id=9")
    assert len(describe_record(trade(symbol="x" * 10_000))) == 300


def test_checkpoints_fold_to_the_highest_id_per_market() -> None:
    venues, symbols, ids = _checkpoint_arrays([
        Checkpoint("binance", "BTC", 5), Checkpoint("binance", "BTC", 9), Checkpoint("binance", "BTC", 7),
        Checkpoint("bybit", "BTC", 1), Checkpoint("binance", "ETH", 3),
    ])
    assert sorted(zip(venues, symbols, ids)) == [("binance", "BTC", 9), ("binance", "ETH", 3), ("bybit", "BTC", 1)]


def test_the_last_storable_time_has_a_partition_day() -> None:
    last_day = EPOCH_DAY + dt.timedelta(days=MAX_TS_US // 86_400_000_000)
    assert last_day == EPOCH_DAY + dt.timedelta(days=MAX_DAY_NUMBER) == dt.date(9999, 12, 30)
    assert partition_name("ticks", last_day) == "ticks_p99991230"


# --- migration files ---------------------------------------------------------------------------


def test_shipped_migrations_are_complete_and_ordered() -> None:
    migrations = load_migrations()
    for mode in ("postgres", "timescale"):
        chosen = plan(migrations, mode)
        assert [m.version for m in chosen] == list(range(1, len(chosen) + 1))
        assert all(m.mode in ("any", mode) for m in chosen)
    assert {m.mode for m in migrations if m.version == 2} == {"postgres", "timescale"}


class FakeEntry:
    def __init__(self, name: str, text: str = "SELECT 1;") -> None:
        self.name = name
        self._text = text

    def read_text(self, encoding: str = "utf-8") -> str:
        return self._text


class FakeDir:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __truediv__(self, other: str) -> "FakeDir":
        return self

    def iterdir(self):
        return [FakeEntry(n) for n in self.names]

    def __str__(self) -> str:
        return "<fake>"


@pytest.mark.parametrize(
    "names, problem",
    [
        ([], "packaged without its SQL files"),
        (["0001_a.sql", "0003_c.sql"], "migration 0002 is missing"),
        (["0001_a.sql", "0001_b.sql"], "must be one file"),
        (["0001_a.postgres.sql"], "must be one file"),
        (["0001_a.sql", "2_b.sql"], "is not named"),
    ],
)
def test_a_broken_migration_set_is_refused(monkeypatch, names: list[str], problem: str) -> None:
    module = sys.modules["ingestd.db.migrate"]  # (ingestd.db.migrate the attribute is the function)
    monkeypatch.setattr(module, "resources", SimpleNamespace(files=lambda package: FakeDir(names)))
    with pytest.raises(MigrationError, match=problem):
        load_migrations()


# --- connection parameters ---------------------------------------------------------------------


def test_connect_params_reveal_secrets_only_to_libpq() -> None:
    cfg = PostgresSinkConfig(
        name="pg", type="postgres", host="db.internal", port=6543, dbname=Secret("prod"),
        user="ingestd", password=Secret("s3cret"), connect_timeout_s=0.5,
    )
    params = connect_params(cfg)
    assert params["password"] == "s3cret" and params["dbname"] == "prod"
    assert params["application_name"] == "ingestd"
    assert params["connect_timeout"] == 2  # libpq's minimum
    assert describe_target(cfg) == "ingestd@db.internal:6543/***"
    assert "password" not in connect_params(PostgresSinkConfig(name="pg", type="postgres"))
