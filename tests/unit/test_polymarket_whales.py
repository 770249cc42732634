"""The whales table in SQLite, `ingestd whales ...`, and the [feeds.polymarket] schema."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from ingestd.cli import main
from ingestd.config import ConfigError, load_config, options_of, parse_config
from ingestd.venues.polymarket.settings import PolymarketFeedConfig
from ingestd.venues.polymarket.whales import SqliteWhaleStore, Whale, normalize_address

A = "0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf"
B = "0x" + "2" * 40


def test_sqlite_store_upsert_load_enable(tmp_path):
    store = SqliteWhaleStore(tmp_path / "db.sqlite")
    assert store.load(enabled_only=False) == []
    store.upsert([Whale(address=A, pseudonym="Theo", tier="MEGA", is_famous=True, estimated_pnl=4.8e7,
                        is_copying_enabled=True), Whale(address=B)])
    rows = store.load(enabled_only=False)
    assert [w.address for w in rows] == [A, B]
    assert rows[0].pseudonym == "Theo" and rows[0].is_famous is True and rows[0].created_at
    assert [w.address for w in store.load(enabled_only=True)] == [A]
    assert store.set_enabled([B, "0x" + "3" * 40], True) == [B]
    assert {w.address for w in store.load(enabled_only=True)} == {A, B}
    store.upsert([Whale(address=A, pseudonym="Théo")])  # replaces every field of the row
    assert store.load(enabled_only=False)[0].pseudonym == "Théo"
    with pytest.raises(sqlite3.IntegrityError):  # the table itself refuses what is not an address
        store.upsert([Whale(address="0xNOT")])


def test_normalize_address():
    assert normalize_address(" 0x1F2DD6D473F3E824CD2F8A89D9C69FB96F6AD0CF ") == A
    for bad in ("0x123", "1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf", "", None):
        with pytest.raises(ValueError):
            normalize_address(bad)


def write_config(tmp_path, feed_sinks='["local"]', extra=""):
    path = tmp_path / "ingestd.toml"
    path.write_text(f'[sinks.local]\ntype = "sqlite"\npath = "pm.sqlite"\n[sinks.k]\ntype = "kafka"\n'
                    f'[feeds.polymarket]\nsinks = {feed_sinks}\n{extra}')
    return path


def run(config, *args):
    return main(["--config", str(config), "whales", *args])


def test_cli_add_list_enable_disable(tmp_path, capsys):
    config, state = write_config(tmp_path), str(tmp_path / "state")
    assert run(config, "add", A.upper().replace("0X", "0x"), "--pseudonym", "Theo", "--tier", "mega", "--enable",
               "--state-dir", state) == 0
    seed = [{"address": A, "notes": "famous", "is_famous": True, "win_rate": 65.0},
            {"address": B, "pseudonym": "Two", "cluster_name": "C", "total_volume": 2e6}]
    (tmp_path / "whales.json").write_text(json.dumps(seed))
    assert run(config, "add", "--file", str(tmp_path / "whales.json"), "--state-dir", state) == 0
    store = SqliteWhaleStore(tmp_path / "state" / "pm.sqlite")
    a, b = store.load(enabled_only=False)
    # `add` on a known whale changes only what is given: A keeps its pseudonym, tier and watch flag.
    assert (a.pseudonym, a.tier, a.is_copying_enabled, a.notes, a.is_famous, a.win_rate) == (
        "Theo", "MEGA", True, "famous", True, 65.0)
    assert (b.pseudonym, b.is_copying_enabled, b.total_volume) == ("Two", False, 2e6)
    capsys.readouterr()
    assert run(config, "list", "--enabled", "--json", "--state-dir", state) == 0
    assert [json.loads(line)["address"] for line in capsys.readouterr().out.splitlines()] == [A]
    assert run(config, "enable", B, "--state-dir", state) == 0
    assert run(config, "disable", A, "--state-dir", state) == 0
    assert [w.address for w in store.load(enabled_only=True)] == [B]
    assert run(config, "list", "--state-dir", state) == 0
    out = capsys.readouterr().out
    assert "Theo" in out and "2 whales in sqlite:" in out
    assert run(config, "enable", "0x" + "9" * 40, "--state-dir", state) == 1  # not in the table


def test_cli_refuses_bad_input_and_stores_without_sql(tmp_path, capsys):
    config, state = write_config(tmp_path), str(tmp_path / "state")
    assert run(config, "add", "0x12", "--state-dir", state) == 2
    (tmp_path / "bad.json").write_text(json.dumps([{"address": A, "wallet_age": 3}]))
    assert run(config, "add", "--file", str(tmp_path / "bad.json"), "--state-dir", state) == 2
    assert "unknown field(s) wallet_age" in capsys.readouterr().err
    assert run(config, "list", "--sink", "k", "--state-dir", state) == 2  # kafka has no SQL database
    kafka_only = write_config(tmp_path, feed_sinks='["k"]')
    assert run(kafka_only, "list", "--state-dir", state) == 2
    assert "no sqlite or postgres sink" in capsys.readouterr().err


def test_schema_and_cross_checks():
    cfg = parse_config('[sinks.local]\ntype = "sqlite"\n[feeds.polymarket]\nasset_ids = ["123"]\n'
                       'whale_addresses = ["0x1F2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf"]\n', environ={})
    feed = cfg.feeds["polymarket"]
    assert feed.asset_ids == ("123",) and feed.poll_interval_s == 5.0 and feed.data_api_requests == 200
    with pytest.raises(ConfigError) as err:
        parse_config('[sinks.local]\ntype = "sqlite"\n[feeds.polymarket]\nwhales_sink = "pg"\n'
                     'asset_ids = ["0xabc"]\nwhale_addresses = ["0x12"]\nreconnect_base_s = 50\nreconnect_cap_s = 1\n',
                     environ={})
    text = str(err.value)
    for key in ("whales_sink", "asset_ids[0]", "whale_addresses[0]", "reconnect_base_s"):
        assert f"feeds.polymarket.{key}" in text, key
    env = parse_config("[feeds.polymarket]\n", environ={"POLYMARKET_WS_URL": "ws://127.0.0.1:9/ws/market"})
    assert env.feeds["polymarket"].ws_url == "ws://127.0.0.1:9/ws/market"


def test_shipped_config_documents_every_key_with_its_default():
    shipped = Path(__file__).resolve().parents[2] / "etc" / "ingestd.toml"
    text = shipped.read_text()
    section = text[text.index("[feeds.polymarket]"):]
    feed = load_config(shipped, environ={}).feeds["polymarket"]
    for key, spec in options_of(PolymarketFeedConfig).items():
        assert re.search(rf"^(# )?{key} = ", section, re.MULTILINE), f"{key} missing from {shipped}"
        assert getattr(feed, key) == spec.default, f"{key} differs from its default"
    with pytest.raises(ConfigError, match="feeds.polymarket.shards: must be 1"):
        parse_config("[feeds.polymarket]\nshards = 2\n", environ={})
