"""The CoinGecko discovery drives a running Binance instance: when the market-cap ranking changes,
ingestd@coingecko rewrites the pairs file and ingestd@binance follows it with live SUBSCRIBE/
UNSUBSCRIBE, without a restart. Four real processes: both simulators and both daemons."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from tests.harness import (
    start_daemon, start_sim, start_venue_sim, stop_process, wait_for, write_config, write_family_config,
)

pytestmark = pytest.mark.slow

BINANCE_SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT,XRPUSDT,DOGEUSDT,ADAUSDT"


def symbols_traded_since(db, since_us: int) -> set[str]:
    if not db.exists():
        return set()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return {s for (s,) in con.execute("SELECT DISTINCT symbol FROM ticks WHERE recv_ts > ?", (since_us,))}
    except sqlite3.OperationalError:
        return set()
    finally:
        con.close()


def test_a_new_discovery_changes_the_binance_symbols_without_a_restart(tmp_path):
    binance_sim = start_sim(tmp_path, "--symbols", BINANCE_SYMBOLS, "--rate", "300")
    gecko_sim = start_venue_sim(tmp_path, "coingecko", "--seed", "2")
    pairs = tmp_path / "shared" / "pairs.json"
    gecko_config = write_family_config(tmp_path, "coingecko", {
        "api_url": gecko_sim.urls["api_url"],
        "pairs_file": str(pairs),
        "pairs_limit": 3,
        "fallback_pairs": ["BTCUSDT"],
        "discovery_refresh_s": 1,
        "validate_pairs": True,
        "binance_rest_url": binance_sim.rest_url,
        "prices_cron": "",
    }, name="coingecko.toml")
    binance_config = write_config(tmp_path, binance_sim, [], fallback_pairs=["BTCUSDT"], pairs_file=str(pairs),
                                  pairs_file_check_s=0.2, depth=False)
    gecko = start_daemon(tmp_path, gecko_config, instance="coingecko", state_dir=tmp_path / "gecko-state",
                         log_name="coingecko.log")
    wait_for(pairs.exists, 20, what="the first discovery")
    assert json.loads(pairs.read_text())["pairs"] == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]  # tether: USDTUSDT skipped
    binance = start_daemon(tmp_path, binance_config, instance="binance", log_name="binance.log")
    try:
        wait_for(lambda: symbols_traded_since(binance.db, 0) == {"BTCUSDT", "ETHUSDT", "BNBUSDT"}, 30,
                 what="trades of the discovered pairs")

        # The ranking changes; wrapped-bitcoin leads but Binance has no WBTCUSDT: validation drops it.
        gecko_sim.post("/_sim/ranking", {"order": ["wrapped-bitcoin", "dogecoin", "cardano"]})
        wait_for(lambda: json.loads(pairs.read_text())["pairs"] == ["BTCUSDT", "DOGEUSDT", "ADAUSDT"], 20,
                 what="the new discovery in the pairs file")
        wait_for(lambda: "symbol list changed" in binance.log(), 20, what="the Binance instance to follow")
        changed_us = time.time_ns() // 1000
        time.sleep(1.0)  # trades in flight before the UNSUBSCRIBE may still arrive
        after = time.time_ns() // 1000
        wait_for(lambda: symbols_traded_since(binance.db, after) == {"BTCUSDT", "DOGEUSDT", "ADAUSDT"}, 30,
                 what="trades of exactly the new pairs")
        assert changed_us < after
        assert binance.proc.poll() is None  # the same process all along
        assert "added=DOGEUSDT,ADAUSDT removed=ETHUSDT,BNBUSDT" in binance.log()

        # A corrupt file (discovery stopped, so nothing rewrites it): the Binance instance falls back
        # to its fallback pairs, and says so.
        assert stop_process(gecko.proc) == 0, gecko.log()
        pairs.write_text("{not json")
        wait_for(lambda: "pairs file unusable" in binance.log(), 20, what="the corrupt file to be noticed")
        time.sleep(1.0)
        after = time.time_ns() // 1000
        wait_for(lambda: symbols_traded_since(binance.db, after) == {"BTCUSDT"}, 30, what="only the fallback pair")
    finally:
        assert stop_process(binance.proc) == 0, binance.log()
        assert stop_process(gecko.proc) == 0, gecko.log()
