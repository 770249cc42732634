"""Acceptance for ingestd@bybit: the Bybit simulator with faults and `ingestd run bybit` as real
processes, and the SQLite store compared with the simulator's ground truth.

What "the store holds exactly the ground truth" means here. Trades are replayable (a REST page of
recent trades fills any gap), so for them it is plain set equality: every trade the venue made from
the first one stored on, each once, with the venue's price, size, side and time. Ticker state is not
replayable (Bybit keeps no history of it), so what changed while a connection was down is gone for
any consumer; for derivatives the test checks, strictly:
1. every stored row equals the venue's merged state as of the row's ts, to the bit, recomputed here
   from the simulator's log of every state it published (a delta's missing field is unchanged;
   basis is the venue's where sent, else mark - index; empty funding fields are NULL);
2. every row's ts is the time of a message the venue published, or a multiple of the sample interval;
3. in the window from the calm point (+ time to resynchronise) to the pause (- the sample grace),
   the stored rows are exactly the venue's state changes plus the sample grid points: set equality;
4. no key twice.
"""

from __future__ import annotations

import bisect
import hashlib
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import trio

from ingestd.config import parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.bybit.server import SimOptions, serve
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry
from ingestd.venues.bybit.feed import BybitFeed
from tests.harness import start_daemon, start_venue_sim, stop_process, wait_for, wait_until, write_family_config

INTERVAL_MS = 500
GRACE_MS = 1000
SETTLE_MS = 3000  # after calm: a drop just before it reconnects (backoff <= 1 s) and resubscribes
END_SLACK_MS = 500  # a connection's last message may be a few ticks before the pause
FAULTS = ["--drop-every", "3.5", "--malformed-rate", "0.01", "--resnapshot-every", "2.5", "--http-429-rate", "0.3",
          "--rest-malformed-rate", "0.05", "--idle-timeout", "5"]
MARKET = ["--symbols", "4", "--futures", "1", "--trade-rate", "30", "--funding-interval-s", "4",
          "--max-args-chars", "100"]


def feed_settings(sim) -> dict:
    return {
        "ws_url": sim.urls["ws_url"], "rest_url": sim.urls["rest_url"], "symbols": sim.urls["symbols"],
        "fallback_pairs": [], "trades": True, "sample_interval_ms": INTERVAL_MS, "sample_grace_ms": GRACE_MS,
        "ping_interval_s": 1.5, "max_args_chars": 100, "reconnect_base_s": 0.1, "reconnect_cap_s": 1.0,
    }


# --- the ground truth, recomputed independently of the feed's code ------------------------------------


def expected_row(state: dict) -> tuple:
    """(funding_rate, next_funding_time, open_interest, open_interest_value, mark, index, basis)."""
    def number(key):
        text = state.get(key, "")
        return None if text == "" else float(text)

    mark, index = number("markPrice"), number("indexPrice")
    basis = number("basis")
    if basis is None and mark is not None and index is not None:
        basis = mark - index
    funding_time = state.get("nextFundingTime", "")
    return (number("fundingRate"), None if funding_time in ("", "0") else int(funding_time) * 1000,
            number("openInterest"), number("openInterestValue"), mark, index, basis)


def stored_trade_id(venue_id: str) -> int:
    """The documented mapping of a Bybit (UUID) trade id to the stored integer key."""
    return int.from_bytes(hashlib.blake2b(venue_id.encode(), digest_size=8).digest(), "big") & (2**63 - 1)


def read_rows(db: Path, sql: str, args=()) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        con.close()


def derivative_rows(db: Path) -> dict[str, dict[int, tuple]]:
    out: dict[str, dict[int, tuple]] = {}
    for symbol, ts, *values in read_rows(db, "SELECT symbol, ts, funding_rate, next_funding_time, open_interest, "
                                             "open_interest_value, mark_price, index_price, basis FROM derivatives "
                                             "WHERE venue = 'bybit'"):
        out.setdefault(symbol, {})[ts] = tuple(values)
    return out


def check_derivatives(db: Path, truth: dict, window: tuple[int, int] | None, interval_ms: int = INTERVAL_MS) -> list[str]:
    """Every problem found (empty: the store holds the truth, in the sense of the module docstring)."""
    problems = []
    total, distinct = read_rows(db, "SELECT count(*), count(DISTINCT venue || symbol || ts) FROM derivatives")[0]
    if total != distinct:
        problems.append(f"{total - distinct} duplicate keys")
    stored = derivative_rows(db)
    for symbol, history in truth["tickers"].items():
        times = [entry["ts"] for entry in history]
        published = set(times)
        rows = stored.get(symbol, {})
        for ts_us, values in sorted(rows.items()):
            ts = ts_us // 1000
            state = history[bisect.bisect_right(times, ts) - 1]["state"]
            if ts < times[0] or values != expected_row(state):
                problems.append(f"{symbol} @{ts}: stored {values}, venue state {expected_row(state)}")
            if ts not in published and ts % interval_ms:
                problems.append(f"{symbol} @{ts}: neither a message time nor a sample time")
        if window is not None:
            lo, hi = window
            changes = {times[i] for i in range(1, len(history))
                       if expected_row(history[i]["state"]) != expected_row(history[i - 1]["state"])}
            grid = set(range(-(-lo // interval_ms) * interval_ms, hi + 1, interval_ms))
            want = {t for t in changes if lo <= t <= hi} | grid
            got = {ts_us // 1000 for ts_us in rows if lo <= ts_us // 1000 <= hi}
            if want != got:
                problems.append(f"{symbol} in [{lo}, {hi}]: missing {sorted(want - got)[:5]} "
                                f"({len(want - got)}), extra {sorted(got - want)[:5]} ({len(got - want)})")
    return problems


def check_trades(db: Path, truth: dict) -> list[str]:
    problems = []
    rows = read_rows(db, "SELECT symbol, trade_id, price, qty, side, ts FROM ticks WHERE venue = 'bybit'")
    by_symbol: dict[str, list[tuple]] = {}
    for symbol, *rest in rows:
        by_symbol.setdefault(symbol, []).append(tuple(rest))
    for symbol, made in truth["trades"].items():
        index = {stored_trade_id(t["i"]): i for i, t in enumerate(made)}
        if len(index) != len(made):
            problems.append(f"{symbol}: two venue ids share a stored id")
        got = by_symbol.get(symbol, [])
        ids = [r[0] for r in got]
        if len(ids) != len(set(ids)):
            problems.append(f"{symbol}: {len(ids) - len(set(ids))} duplicates")
        unknown = set(ids) - set(index)
        if unknown:
            problems.append(f"{symbol}: {len(unknown)} trades the venue never made")
        if not got:
            problems.append(f"{symbol}: no trades stored")
            continue
        first = min(index[i] for i in ids if i in index)
        missing = [t["i"] for t in made[first:] if stored_trade_id(t["i"]) not in set(ids)]
        if missing:
            problems.append(f"{symbol}: {len(missing)} of {len(made) - first} trades missing, e.g. {missing[:3]}")
        for trade_id, price, qty, side, ts in got:
            t = made[index[trade_id]] if trade_id in index else None
            if t is not None and (price, qty, side, ts) != (float(t["p"]), float(t["v"]), t["S"].lower(), t["T"] * 1000):
                problems.append(f"{symbol} {t['i']}: stored {(price, qty, side, ts)}, venue {t}")
    return problems


def converged(check, timeout: float) -> list[str]:
    """Poll `check` until it finds no problem or `timeout` passes; the problems of the last look."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems or time.monotonic() > deadline:
            return problems[:20]
        time.sleep(0.3)


# --- through real processes --------------------------------------------------------------------------


def test_store_holds_the_venue_truth_through_faults(tmp_path):
    sim = start_venue_sim(tmp_path, "bybit", "--seed", "7", *MARKET, *FAULTS)
    config = write_family_config(tmp_path, "bybit", feed_settings(sim))
    daemon = start_daemon(tmp_path, config, instance="bybit")
    wait_for(lambda: read_rows(daemon.db, "SELECT 1 FROM derivatives LIMIT 1"), 30, what="first derivative row")
    time.sleep(9)  # faults: drops, bad frames, unsolicited snapshots, 429s, truncated REST bodies
    calm_ts = sim.post("/_sim/calm")["ts"]
    time.sleep(5)
    pause_ts = sim.post("/_sim/pause")["ts"]
    truth = sim.get("/_sim/truth")
    window = (calm_ts + SETTLE_MS, pause_ts - GRACE_MS - END_SLACK_MS)
    assert converged(lambda: check_trades(daemon.db, truth) + check_derivatives(daemon.db, truth, window), 25) == []
    assert stop_process(daemon.proc) == 0, daemon.log()[-3000:]
    assert check_derivatives(daemon.db, truth, window) == []
    assert check_trades(daemon.db, truth) == []

    stats = sim.get("/_sim/stats")
    assert stats["drops"] >= 2 and stats["malformed_sent"] >= 1 and stats["resnapshots"] >= 1
    assert stats["rest_429"] >= 1
    assert stats["max_connections"] >= 3  # 5 contracts' topics split by max_args_chars = 100
    assert stats["idle_closes"] == 0  # the pings kept every connection alive past the 5 s idle timeout
    assert stats["subscribe_refused"] == 0  # never over the per-request or per-connection args limits
    assert stats["unsubscriptions"] >= 1  # a bad frame was answered by resubscribing, for a fresh snapshot
    log = daemon.log()
    assert "Traceback" not in log
    # the window really covered something
    assert sum(len(rows) for rows in derivative_rows(daemon.db).values()) > 100


def test_kill_and_restart_resumes_trades_from_checkpoints(tmp_path):
    sim = start_venue_sim(tmp_path, "bybit", "--seed", "11", *MARKET, "--drop-every", "2.5", "--malformed-rate",
                          "0.01", "--http-429-rate", "0.3")
    config = write_family_config(tmp_path, "bybit", feed_settings(sim))
    first = start_daemon(tmp_path, config, instance="bybit", log_name="first.log")
    wait_for(lambda: len(read_rows(first.db, "SELECT 1 FROM checkpoints")) == 5, 30, what="checkpoints of all 5")
    time.sleep(3)
    stop_process(first.proc, signal.SIGKILL)
    time.sleep(2.5)  # the venue trades on meanwhile: a restart must fetch these
    second = start_daemon(tmp_path, config, instance="bybit", log_name="second.log")
    time.sleep(3)
    sim.post("/_sim/calm")
    time.sleep(2)
    sim.post("/_sim/pause")
    truth = sim.get("/_sim/truth")
    assert converged(lambda: check_trades(second.db, truth), 25) == []  # every trade once, across the restart
    assert stop_process(second.proc) == 0, second.log()[-3000:]
    assert check_trades(second.db, truth) == []
    assert check_derivatives(second.db, truth, None) == []
    assert "resuming from stored checkpoints" in second.log()
    # a clean stop leaves each contract's resume point at its newest trade
    newest = {s: max(t["T"] for t in made) for s, made in truth["trades"].items()}
    assert dict(read_rows(second.db, "SELECT symbol, trade_id FROM checkpoints WHERE venue = 'bybit'")) == newest


# --- in one Trio loop: what only the inside shows ---------------------------------------------------------


def inprocess_config(sim, symbols: list[str]):
    lines = [
        "[feeds.bybit]", f'ws_url = "{sim.ws_url}"', f'rest_url = "{sim.rest_url}"',
        "symbols = [" + ", ".join(f'"{s}"' for s in symbols) + "]", "fallback_pairs = []", "trades = true",
        "sample_interval_ms = 200", "sample_grace_ms = 500", "max_args_chars = 100",
        "reconnect_base_s = 0.05", "reconnect_cap_s = 0.2",
    ]
    return parse_config("\n".join(lines), environ={}).feeds["bybit"]


@pytest.mark.trio
async def test_reload_pause_resume_and_reconnect(tmp_path):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, SimOptions(perpetuals=4, seed=3, trade_rate=20))
        stats = StatsRegistry("test")
        sink = SqliteSink("local", tmp_path / "local.sqlite", stats=stats)
        runner = SinkRunner(sink, stats, batch_size=500, linger_s=0.01)
        await nursery.start(runner.run)
        feed = BybitFeed(inprocess_config(sim, ["BTCUSDT", "ETHUSDT"]), Router([runner]), stats)
        await nursery.start(feed.run)

        def synced(*symbols):
            return all(feed._books[s].synced for s in symbols if s in feed._books)

        def subscribed():
            return sorted(t for session in sim.sessions for t in session.topics)

        await wait_until(lambda: synced("BTCUSDT", "ETHUSDT") and len(sim.sessions) == 1)
        assert stats.gauges["bybit.connections_planned"] == 1  # 34 characters of topics each, 100 allowed
        opened = sim.counters["connections_opened"]

        added, removed = await feed.update_symbols(["BTCUSDT", "SOLUSDT", "XRPUSDT"])
        assert (added, removed) == (["SOLUSDT", "XRPUSDT"], ["ETHUSDT"])
        await wait_until(lambda: "SOLUSDT" in feed._books and synced("BTCUSDT", "SOLUSDT", "XRPUSDT")
                         and "tickers.ETHUSDT" not in subscribed() and len(subscribed()) == 6)
        # ETHUSDT unsubscribed and SOLUSDT subscribed live on the first connection, XRPUSDT on a new one
        assert sim.counters["connections_opened"] == opened + 1 and sim.counters["unsubscriptions"] == 2
        assert stats.gauges["bybit.connections_planned"] == 2

        feed.pause()
        await wait_until(lambda: not sim.sessions)
        await trio.sleep(1.0)
        assert not sim.sessions  # stays idle while paused
        feed.resume()
        await wait_until(lambda: len(sim.sessions) == 2 and synced("BTCUSDT", "SOLUSDT", "XRPUSDT"))
        assert feed.reconnect() == 2
        await wait_until(lambda: sim.counters["connections_opened"] == opened + 5 and
                         synced("BTCUSDT", "SOLUSDT", "XRPUSDT"))
        await trio.sleep(0.5)
        sim.paused = True
        truth = sim.market.truth()
        btc = {"trades": {"BTCUSDT": truth["trades"]["BTCUSDT"]}}
        db = tmp_path / "local.sqlite"
        await wait_until(lambda: not check_trades(db, btc))  # the pause and the reconnect left no hole
        feed.stop()
        nursery.cancel_scope.cancel()
    assert check_trades(db, btc) == []
    assert check_derivatives(db, {"tickers": truth["tickers"]}, None, interval_ms=200) == []
    assert stats.counters["bybit.trades_backfilled"] > 0
