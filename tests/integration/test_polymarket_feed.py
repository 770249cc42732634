"""Acceptance: `ingestd run polymarket` against the Polymarket simulator, both real processes, with
connection drops, malformed frames, 429s and malformed Data API bodies, the initial book dump as
an array, and the whales table managed with `ingestd whales`. After the faults stop, the SQLite
store holds exactly the simulator's ground truth: every trade of the watched whales, every trade of
each followed token's tape, and each token's final book."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

from tests.harness import REPO, start_daemon, start_venue_sim, stop_process, wait_for, write_family_config

SIM_FAULTS = ("--rate", "40", "--markets", "4", "--whales", "4", "--drop-every", "2", "--malformed-rate", "0.05",
              "--data-429-rate", "0.1", "--data-malformed-rate", "0.1", "--ping-timeout", "5", "--book-dump", "array",
              "--data-lag-ms", "300")


def whales_cli(config, state, *args):
    done = subprocess.run([sys.executable, "-m", "ingestd", "--config", str(config), "whales", *args,
                           "--state-dir", str(state)], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def feed_settings(sim, assets):
    return {
        "ws_url": sim.urls["ws_url"], "data_api_url": sim.urls["data_api_url"], "asset_ids": assets,
        "book_levels": 1000, "book_interval_ms": 100, "poll_interval_s": 0.5, "ping_interval_s": 1.0,
        "whales_reload_s": 1.0, "reconnect_base_s": 0.05, "reconnect_cap_s": 0.5, "backfill_max_s": 3600,
        "page_size": 100,
    }


class Store:
    def __init__(self, path):
        self.path = path

    def rows(self, sql):
        if not self.path.exists():
            return []
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
        finally:
            con.close()

    def whale_trades(self):
        return self.rows("SELECT trade_id, token_id, trader_address, side, size, price, ts, pseudonym FROM whale_trades")

    def market_trades(self):
        return self.rows("SELECT asset_id, tx_hash, ts, price, size, side, market FROM prediction_trades")

    def latest_books(self):
        books = {}
        for asset, bids, asks in self.rows("SELECT asset_id, bids, asks FROM prediction_books ORDER BY recv_ts, ts"):
            books[asset] = (json.loads(bids), json.loads(asks))
        return books


def expected(truth, configured, watched):
    """The whale trades of watched wallets; and per followed token (configured, or traded by a watched
    whale) its tape: every trade from its first subscription's second, or from the earliest watched
    whale trade in it if that is earlier."""
    whale = {(t["transactionHash"], t["asset"]): t for t in truth["whale_trades"] if t["proxyWallet"] in watched}
    start = {a: truth["subscribed_ms"][a][0] // 1000 for a in configured}
    for t in whale.values():
        start[t["asset"]] = min(start.get(t["asset"], t["timestamp"]), t["timestamp"])
    tape = {(t["asset_id"], t["tx_hash"]): t for t in truth["trades"]
            if t["asset_id"] in start and t["ts_ms"] // 1000 >= start[t["asset_id"]]}
    return whale, tape, set(start)


def check_store(store, truth, configured, watched, pseudonyms):
    whale, tape, followed = expected(truth, configured, watched)
    got_whales = store.whale_trades()
    assert len(got_whales) == len({(r[0], r[1]) for r in got_whales}), "duplicate whale trades"
    assert {(r[0], r[1]) for r in got_whales} == set(whale)
    for trade_id, token, trader, side, size, price, ts, pseudonym in got_whales:
        t = whale[(trade_id, token)]
        assert (trader, side, size, price, ts) == (t["proxyWallet"], t["side"], t["size"], t["price"],
                                                   t["timestamp"] * 1_000_000)
        assert pseudonym == pseudonyms.get(trader, t["pseudonym"])
    got = store.market_trades()
    keys = [(r[0], r[1]) for r in got]
    assert len(keys) == len(set(keys)), "duplicate market trades"
    missing, extra = set(tape) - set(keys), set(keys) - set(tape)
    assert not missing and not extra, f"{len(missing)} missing, {len(extra)} extra of {len(tape)}"
    for asset, tx, ts, price, size, side, market in got:
        t = tape[(asset, tx)]
        assert (ts, price, size, side.upper(), market) == (t["ts_ms"] // 1000 * 1_000_000, t["price"], t["size"],
                                                          t["side"], t["market"])
    books = store.latest_books()
    for asset in followed:
        ref = truth["books"][asset]
        assert books.get(asset) == (ref["bids"], ref["asks"]), asset
    return len(got_whales), len(got), len(followed)


def converged(store, sim, configured, watched, pseudonyms):
    truth = sim.get("/_sim/truth")
    try:
        return check_store(store, truth, configured, watched, pseudonyms)
    except AssertionError:
        return None


def test_ground_truth_with_faults_and_a_whale_enabled_while_running(tmp_path):
    sim = start_venue_sim(tmp_path, "polymarket", "--seed", "11", *SIM_FAULTS)
    truth = sim.get("/_sim/truth")
    w1, w2, w3, w4 = (w["address"] for w in truth["whales"])
    configured = truth["markets"][0]["assets"]
    config = write_family_config(tmp_path, "polymarket", feed_settings(sim, configured))
    state = tmp_path / "state"
    whales_cli(config, state, "add", w1, "--pseudonym", "Theo", "--tier", "MEGA", "--enable")
    whales_cli(config, state, "add", w2, "--enable")
    whales_cli(config, state, "add", w3, "--pseudonym", "Late")  # known, not watched yet
    daemon = start_daemon(tmp_path, config, instance="polymarket", state_dir=state)
    store = Store(daemon.db)
    wait_for(lambda: store.whale_trades(), 30, what="the first whale trades stored")
    time.sleep(2)
    assert "enabled" in whales_cli(config, state, "enable", w3)  # the daemon reloads the table
    time.sleep(4)
    sim.post("/_sim/calm")
    time.sleep(1.5)
    sim.post("/_sim/pause")
    pseudonyms = {w1: "Theo", w3: "Late"}
    watched = {w1, w2, w3}  # w4 never was
    wait_for(lambda: converged(store, sim, configured, watched, pseudonyms), 40, interval=0.5,
             what=f"the store to equal the simulator's truth; daemon log:\n{daemon.log()[-3000:]}")
    assert stop_process(daemon.proc) == 0
    whale_n, trade_n, followed_n = check_store(store, sim.get("/_sim/truth"), configured, watched, pseudonyms)
    assert whale_n > 10 and trade_n > 50 and followed_n > len(configured)  # whales led to more markets
    stats = sim.get("/_sim/stats")
    assert stats["drops"] >= 2 and stats["malformed_sent"] > 0 and stats["data_429"] > 0
    assert stats["data_malformed"] > 0 and stats["pings"] > 0 and stats.get("ping_timeouts", 0) == 0
    log = daemon.log()
    assert "connection lost, reconnecting" in log and "bad frame skipped" in log
    sim.stop()


def test_restart_after_kill_resumes_whales_and_tapes_exactly(tmp_path):
    sim = start_venue_sim(tmp_path, "polymarket", "--seed", "12", *SIM_FAULTS)
    truth = sim.get("/_sim/truth")
    w1, w2 = (w["address"] for w in truth["whales"][:2])
    configured = truth["markets"][1]["assets"]
    config = write_family_config(tmp_path, "polymarket", {**feed_settings(sim, configured), "whale_lookback_s": 1})
    state = tmp_path / "state"
    whales_cli(config, state, "add", w1, w2, "--enable")
    daemon = start_daemon(tmp_path, config, instance="polymarket", state_dir=state)
    store = Store(daemon.db)
    wait_for(lambda: len(store.rows("SELECT * FROM checkpoints WHERE venue = 'polymarket'")) >= 4, 30,
             what="resume points for whales and tokens")
    time.sleep(2)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    first_run = len(store.whale_trades())
    time.sleep(3)  # the market goes on while the daemon is down
    daemon = start_daemon(tmp_path, config, instance="polymarket", state_dir=state, log_name="daemon2.log")
    time.sleep(4)
    sim.post("/_sim/calm")
    time.sleep(1.5)
    sim.post("/_sim/pause")
    wait_for(lambda: converged(store, sim, configured, {w1, w2}, {}), 40, interval=0.5,
             what=f"the store to equal the simulator's truth; daemon log:\n{daemon.log()[-3000:]}")
    assert stop_process(daemon.proc) == 0
    assert len(store.whale_trades()) > first_run > 0
    assert "resuming from stored checkpoints" in daemon.log()
    sim.stop()
