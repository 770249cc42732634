"""Acceptance for ingestd@coingecko through real processes: the simulated CoinGecko API with faults
(429 with Retry-After, 503, malformed bodies, dropped connections) and `ingestd run coingecko`.
The prices table must hold exactly the price rows the simulator served to the price poller, and
the pairs file the discovery's result."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from ingestd.venues.coingecko.protocol import parse_time_us
from tests.harness import REPO, start_daemon, start_venue_sim, stop_process, wait_for, write_family_config

pytestmark = pytest.mark.slow

API_KEY = "CG-test-3f9a"
COINS = ["bitcoin", "ethereum", "solana", "ripple"]
COLUMNS = ("coin_id, symbol, ts, price_usd, market_cap, market_cap_rank, total_volume, high_24h, low_24h, "
           "price_change_24h, price_change_pct_24h, circulating_supply, source")


def stored_prices(db) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(f"SELECT {COLUMNS} FROM prices").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def truth_rows(truth: dict, via: str = "ids") -> set[tuple]:
    return {
        (r["id"], r["symbol"].upper(), parse_time_us(r["last_updated"]), r["current_price"], r["market_cap"],
         r["market_cap_rank"], r["total_volume"], r["high_24h"], r["low_24h"], r["price_change_24h"],
         r["price_change_percentage_24h"], r["circulating_supply"], "coingecko")
        for r in truth["prices"] if r["via"] == via
    }


def feed_config(tmp_path, sim, **overrides) -> dict:
    return {
        "api_url": sim.urls["api_url"],
        "api_plan": "demo",
        "coins": COINS,
        "prices_cron": "* * * * * *",  # every second (croniter's seconds field)
        "pairs_file": str(tmp_path / "pairs.json"),
        "pairs_limit": 6,
        "fallback_pairs": ["BTCUSDT"],
        "discovery_refresh_s": 2,
        "validate_pairs": False,
        "max_attempts": 3,
        "request_timeout_s": 5,
        **overrides,
    }


def test_prices_equal_what_was_served_through_faults_and_discovery_writes_the_pairs(tmp_path):
    sim = start_venue_sim(tmp_path, "coingecko", "--seed", "5", "--update-interval", "1", "--api-key", API_KEY,
                          "--rate-limit-rate", "0.12", "--retry-after", "1", "--error-rate", "0.05",
                          "--malformed-rate", "0.06", "--drop-rate", "0.05")
    config = write_family_config(tmp_path, "coingecko", feed_config(tmp_path, sim))
    daemon = start_daemon(tmp_path, config, instance="coingecko", env={"COINGECKO_API_KEY": API_KEY})
    try:
        wait_for(lambda: all(v > 0 for v in sim.get("/_sim/truth")["faults"].values()), 35,
                 what="every fault kind served")
        sim.post("/_sim/calm")
        before = len(truth_rows(sim.get("/_sim/truth")))

        def caught_up():
            stored = set(stored_prices(daemon.db))
            return len(stored) >= before + len(COINS) and stored == truth_rows(sim.get("/_sim/truth"))

        wait_for(caught_up, 20, what="every served price stored, a poll after calm included")
    finally:
        assert stop_process(daemon.proc) == 0, daemon.log()
    truth = sim.get("/_sim/truth")
    stored = stored_prices(daemon.db)
    assert len(stored) == len(set(stored))
    assert set(stored) == truth_rows(truth)
    assert {row[0] for row in stored} == set(COINS)

    doc = json.loads((tmp_path / "pairs.json").read_text())
    # market-cap order bitcoin, ethereum, tether (its own quote: skipped), binancecoin, solana, usd-coin, ripple
    assert doc["pairs"] == ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "USDCUSDT", "XRPUSDT"]
    log = daemon.log()
    assert API_KEY not in log
    assert "discovered tradable pairs" in log


def test_backfill_replays_the_lookback_window_into_the_sinks(tmp_path):
    sim = start_venue_sim(tmp_path, "coingecko", "--seed", "9", "--rate-limit-rate", "0.2", "--retry-after", "1")
    config = write_family_config(tmp_path, "coingecko", feed_config(tmp_path, sim, coins=["bitcoin", "solana"],
                                                                     max_attempts=8))
    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "ingestd", "--config", str(config), "backfill", "coingecko", "--days", "3",
         "--state-dir", str(state)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    truth = sim.get("/_sim/truth")
    points = truth["chart"]
    assert {p[0] for p in points} == {"bitcoin", "solana"}
    assert 2 * 3 * 24 <= len(points) <= 2 * (3 * 24 + 2)  # hourly over 3 days
    con = sqlite3.connect(state / "ingestd.sqlite")
    rows = con.execute("SELECT coin_id, ts, price_usd, market_cap, total_volume, symbol FROM prices").fetchall()
    assert {r[:5] for r in rows} == {(c, ms * 1000, p, cap, vol) for c, ms, p, cap, vol in points}
    assert {r[5] for r in rows} == {"BTC", "SOL"}
    assert "backfill coingecko:" in done.stderr and "2/2" in done.stderr  # plain progress lines (not a TTY)
