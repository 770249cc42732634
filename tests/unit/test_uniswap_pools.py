"""The dex_pools store in SQLite, which sink's database the feed reads it from, and the
[feeds.uniswap] keys that go with it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from ingestd.config import ConfigError, FeedConfig, load_config, options_of, parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry
from ingestd.venues.uniswap.pools import SqlitePoolStore, normalize, store_for_sink_object
from ingestd.venues.uniswap.settings import UniswapFeedConfig

A = "0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640"
B = "0xcbcdf9626bc03e24f779434178a73a0b4bad62ed"


def test_sqlite_store_creates_the_table_and_reads_the_rows_of_one_chain(tmp_path):
    db = tmp_path / "sub" / "store.sqlite"
    store = SqlitePoolStore(db)
    assert store.load("ethereum") == []  # an empty table, created with the legacy columns
    con = sqlite3.connect(db, isolation_level=None)
    con.executemany("INSERT INTO dex_pools (chain, address, token0, token1, fee_bps) VALUES (?, ?, ?, ?, ?)",
                    [("ethereum", B, "WBTC", "WETH", 30), ("Ethereum", A, "USDC", "WETH", 5),
                     ("arbitrum", "0x" + "1" * 40, None, None, None)])
    con.close()
    assert store.load("ethereum") == [A, B]
    assert store.load("arbitrum") == ["0x" + "1" * 40]
    assert store.description == f"sqlite:{db}"


def test_sqlite_store_raises_on_a_table_it_cannot_read(tmp_path):
    db = tmp_path / "store.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE dex_pools (pool TEXT)")
    con.close()
    with pytest.raises(sqlite3.OperationalError, match="no such column"):
        SqlitePoolStore(db).load("ethereum")


def test_normalize_lowercases_deduplicates_and_sets_aside_what_is_not_an_address():
    pools, bad = normalize([B.upper().replace("0X", "0x"), A, B, " " + A + " ", "0x12", None, "uniswap"])
    assert pools == [B, A]
    assert bad == ["0x12", None, "uniswap"]


def router_of(tmp_path, *sinks) -> Router:
    stats = StatsRegistry("test")
    return Router([SinkRunner(sink, stats, batch_size=10, linger_s=0.01) for sink in sinks])


def test_the_table_is_read_from_pools_sink_else_the_first_sql_sink(tmp_path):
    stats = StatsRegistry("test")
    one, two = SqliteSink("one", tmp_path / "one.sqlite", stats=stats), SqliteSink("two", tmp_path / "two.sqlite",
                                                                                   stats=stats)
    text = '[sinks.one]\ntype = "sqlite"\n[sinks.two]\ntype = "sqlite"\n[feeds.uniswap]\nsinks = ["one", "two"]\n'
    first = parse_config(text, environ={}).feeds["uniswap"]
    named = parse_config(text + 'pools_sink = "two"\n', environ={}).feeds["uniswap"]
    router = router_of(tmp_path, one, two)
    assert router.store_in_sinks(store_for_sink_object, first.pools_sink).description == \
        f"sqlite:{tmp_path / 'one.sqlite'}"
    assert router.store_in_sinks(store_for_sink_object, named.pools_sink).description == \
        f"sqlite:{tmp_path / 'two.sqlite'}"
    assert router_of(tmp_path).store_in_sinks(store_for_sink_object) is None  # no SQL sink: config pools only


def test_settings_defaults_and_bad_values_name_the_key():
    feed = parse_config("[feeds.uniswap]\n", environ={}).feeds["uniswap"]
    assert (feed.pools_sink, feed.pools_reload_s, feed.pools) == ("", 300.0, (A,))
    # the table's pools alone
    assert parse_config("[feeds.uniswap]\npools = []\n", environ={}).feeds["uniswap"].pools == ()
    for text, key in (("pools_reload_s = 0", "pools_reload_s"), ("pools_reload_s = 86401", "pools_reload_s"),
                      ('pools_reload_s = "often"', "pools_reload_s"), ('pools_sink = "pg"', "pools_sink"),
                      ('pools_sink = "a b"', "pools_sink")):
        with pytest.raises(ConfigError) as err:
            parse_config(f"[feeds.uniswap]\n{text}\n", environ={})
        assert f"feeds.uniswap.{key}:" in str(err.value), text


def test_shipped_config_documents_every_key_with_its_default():
    shipped = Path(__file__).resolve().parents[2] / "etc" / "ingestd.toml"
    text = shipped.read_text()
    start = text.index("[feeds.uniswap]")
    section = text[start:text.index("\n[", start + 1)]
    feed = load_config(shipped, environ={}).feeds["uniswap"]
    for key, spec in options_of(UniswapFeedConfig).items():
        if key in options_of(FeedConfig):  # the keys every feed has
            continue
        assert re.search(rf"^(# )?{key} = ", section, re.MULTILINE), f"{key} missing from {shipped}"
        assert getattr(feed, key) == spec.default, f"{key} differs from its default"
