"""Acceptance for the Binance backbone, against real processes: the simulator and the daemon as a
user runs them, judged only by the simulator's ground truth and the daemon's SQLite file."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.harness import (
    REPO,
    count_rows,
    missing_and_extra,
    start_daemon,
    start_sim,
    stop_process,
    stored_trade_ids,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def exactly_once_report(db, truth):
    stored = stored_trade_ids(db)
    since = {s: min(ids) for s, ids in stored.items() if ids}
    assert set(since) == set(truth), f"no trades stored for {set(truth) - set(since)}"
    return missing_and_extra(stored, truth, since)


def wait_exactly_once(db, sim, timeout=40.0):
    """Stop the faults and let the market move on for a moment (as on a live venue, the next events
    reveal any loss), pause it, then wait until the store holds every trade made since the daemon's
    first one, each exactly once. Returns the ground truth compared against."""
    sim.post("/_sim/calm")
    time.sleep(1.5)
    sim.post("/_sim/pause")
    truth = sim.truth()
    report = {}

    def settled():
        nonlocal report
        report = exactly_once_report(db, truth)
        return not report

    try:
        wait_for(settled, timeout, interval=0.5, what="the store to match the ground truth")
    except AssertionError:
        raise AssertionError(f"store differs from ground truth: {report}") from None
    return truth


def latest_books(db) -> dict[str, tuple[int, list, list]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            """SELECT symbol, update_id, bids, asks FROM books b
               WHERE update_id = (SELECT MAX(update_id) FROM books WHERE symbol = b.symbol)"""
        ).fetchall()
    finally:
        con.close()
    return {s: (u, json.loads(b), json.loads(a)) for s, u, b, a in rows}


def assert_books_match_reference(db, sim, symbols, timeout=20.0):
    """Each symbol's last stored book (all levels: book_levels exceeds the simulated depth) equals
    the simulator's reference book at the same update id."""
    refs = {s: sim.book(s) for s in symbols}

    def caught_up():
        books = latest_books(db)
        return all(s in books and books[s][0] == refs[s]["lastUpdateId"] for s in symbols) and books

    books = wait_for(caught_up, timeout, what="books at the simulator's last update id")
    for s in symbols:
        _, bids, asks = books[s]
        ref = refs[s]
        assert [(float(p), float(q)) for p, q in ref["bids"]] == [tuple(x) for x in bids], s
        assert [(float(p), float(q)) for p, q in ref["asks"]] == [tuple(x) for x in asks], s


def bad_frame_log_lines(log: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in re.findall(r"bad frame skipped.*?problem=(\w+)", log):
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_drops_gaps_and_malformed_frames_every_trade_once_and_books_converge(tmp_path):
    sim = start_sim(
        tmp_path, "--symbols", "6", "--rate", "600", "--seed", "7",
        "--drop-every", "4", "--drop-rate", "0.02", "--malformed-rate", "0.02",
    )
    try:
        symbols = list(sim.truth())
        daemon = start_daemon(tmp_path, write_config(tmp_path, sim, symbols, book_levels=100))
        time.sleep(14)
        assert daemon.proc.poll() is None, daemon.log()
        wait_exactly_once(daemon.db, sim)
        assert_books_match_reference(daemon.db, sim, symbols)
        stats = sim.get("/_sim/stats")
        assert stats["drops"] >= 2 and stats["frames_dropped"] > 0 and stats["malformed_sent"] > 0
        assert stop_process(daemon.proc) == 0
        log = daemon.log()
        # Bad frames are logged at most once per 10 s per kind (plus the first), never crash anything.
        per_kind = bad_frame_log_lines(log)
        assert per_kind, log
        assert all(n <= 3 for n in per_kind.values()), per_kind
        assert "more since last report" in log
    finally:
        sim.stop()


def test_server_shutdown_is_make_before_break_without_any_backfill(tmp_path):
    # backfill off: only an overlapping replacement connection can keep the tape complete.
    sim = start_sim(tmp_path, "--symbols", "4", "--rate", "400", "--seed", "3",
                    "--shutdown-every", "3", "--shutdown-grace", "2")
    try:
        symbols = list(sim.truth())
        daemon = start_daemon(tmp_path, write_config(tmp_path, sim, symbols, backfill=False, book_levels=100))
        time.sleep(12)
        wait_exactly_once(daemon.db, sim, timeout=15)
        assert_books_match_reference(daemon.db, sim, symbols)
        assert sim.get("/_sim/stats")["shutdowns"] >= 2
        assert stop_process(daemon.proc) == 0
        assert daemon.log().count("replaced connection") >= 2
    finally:
        sim.stop()


def test_kill_9_then_restart_stores_every_trade_exactly_once(tmp_path):
    sim = start_sim(tmp_path, "--symbols", "4", "--rate", "800", "--seed", "11", "--drop-rate", "0.01")
    try:
        symbols = list(sim.truth())
        config = write_config(tmp_path, sim, symbols)
        first = start_daemon(tmp_path, config, log_name="first.log")
        wait_for(lambda: sum(map(len, stored_trade_ids(first.db).values())) > 1500, 20, what="trades stored")
        first.proc.kill()  # SIGKILL: no flush, no goodbye
        first.proc.wait()
        time.sleep(2)  # the market moves on while the daemon is down
        second = start_daemon(tmp_path, config, state_dir=first.state_dir, log_name="second.log")
        time.sleep(5)
        wait_exactly_once(second.db, sim)
        assert "resuming from stored checkpoints" in second.log()
        assert stop_process(second.proc) == 0
    finally:
        sim.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_and_exits_within_5_seconds(tmp_path, sig):
    sim = start_sim(tmp_path, "--symbols", "3", "--rate", "600", "--seed", "5")
    try:
        symbols = list(sim.truth())
        daemon = start_daemon(tmp_path, write_config(tmp_path, sim, symbols))
        wait_for(lambda: sum(map(len, stored_trade_ids(daemon.db).values())) > 500, 20, what="trades stored")
        t0 = time.monotonic()
        daemon.proc.send_signal(sig)
        rc = daemon.proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        assert rc == 0 and elapsed < 5.0, (rc, elapsed, daemon.log()[-2000:])
        assert "stopped cleanly" in daemon.log()
        # Flushed: no hole in what was stored, and the checkpoint covers all of it.
        stored = stored_trade_ids(daemon.db)
        con = sqlite3.connect(daemon.db)
        checkpoints = dict(con.execute("SELECT symbol, trade_id FROM checkpoints").fetchall())
        con.close()
        for symbol, ids in stored.items():
            assert sorted(ids) == list(range(min(ids), max(ids) + 1)), symbol
            assert checkpoints[symbol] == max(ids), symbol
    finally:
        sim.stop()


def test_rest_429_is_honoured_and_nothing_is_lost(tmp_path):
    # A tiny weight budget in a short window forces 429s while gaps need REST backfill.
    sim = start_sim(tmp_path, "--symbols", "3", "--rate", "300", "--seed", "9", "--drop-rate", "0.05",
                    "--weight-limit", "150", "--weight-window", "5")
    try:
        symbols = list(sim.truth())
        daemon = start_daemon(
            tmp_path,
            write_config(tmp_path, sim, symbols, snapshot_limit=100, book_levels=10,
                         rest_weight_limit=100000, rest_weight_headroom=1.0),  # overconfident on purpose
        )
        time.sleep(10)
        wait_exactly_once(daemon.db, sim, timeout=60)
        stats = sim.get("/_sim/stats")
        assert stats["http_429"] > 0, stats
        assert stats["http_418"] == 0, "the daemon kept calling during Retry-After"
        assert stop_process(daemon.proc) == 0
    finally:
        sim.stop()


def test_demo_from_the_readme_stores_ticks_and_books(tmp_path):
    state = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "ingestd", "demo", "--duration", "20", "--state-dir", str(state)],
        cwd=REPO, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    db = state / "ingestd.sqlite"
    assert count_rows(db, "ticks") > 0 and count_rows(db, "books") > 0
    assert "total" in proc.stdout  # the final table
