"""The whole daemon into PostgreSQL, as a user runs it: simulator -> `ingestd run binance` -> postgres
sink on the throwaway server, judged by the simulator's ground truth and the database's rows."""

from __future__ import annotations

import json
import textwrap
import re
import time
from pathlib import Path

import psycopg
import pytest

from tests.harness import SimProcess, missing_and_extra, start_daemon, start_sim, stop_process, wait_for
from tests.pg_server import Database, pg_database, pg_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def write_pg_config(tmp: Path, sim: SimProcess, symbols: list[str], db: Database) -> Path:
    feed = {
        "sinks": ["pg"],
        "ws_url": sim.ws_url,
        "rest_url": sim.rest_url,
        "symbols": symbols,
        "fallback_pairs": [],
        "book_interval_ms": 200,
        "reconnect_base_s": 0.1,
        "reconnect_cap_s": 1.0,
    }
    text = textwrap.dedent(
        f"""
        [daemon]
        linger_ms = 20
        shutdown_timeout_s = 4.0
        http_port = 0

        [sinks.pg]
        type = "postgres"
        host = "{db.host}"
        port = {db.port}
        dbname = "{db.dbname}"
        user = "{db.user}"
        connect_timeout_s = 2
        """
    ) + "[feeds.binance]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in feed.items())
    path = tmp / "ingestd.toml"
    path.write_text(text)
    return path


def stored_trade_ids(db: Database) -> dict[str, list[int]]:
    try:
        with psycopg.connect(db.conninfo, connect_timeout=2) as conn:
            rows = conn.execute("SELECT symbol, trade_id FROM ticks WHERE venue = 'binance'").fetchall()
    except psycopg.Error:  # not migrated yet, or the server is down
        return {}
    out: dict[str, list[int]] = {}
    for symbol, trade_id in rows:
        out.setdefault(symbol, []).append(trade_id)
    return out


def wait_exactly_once(db: Database, sim: SimProcess, timeout: float = 40.0) -> None:
    sim.post("/_sim/calm")
    time.sleep(1.5)
    sim.post("/_sim/pause")
    truth = sim.truth()
    report: dict = {}

    def settled() -> bool:
        nonlocal report
        stored = stored_trade_ids(db)
        since = {s: min(ids) for s, ids in stored.items() if ids}
        if set(since) != set(truth):
            report = {"symbols without trades": sorted(set(truth) - set(since))}
            return False
        report = missing_and_extra(stored, truth, since)
        return not report

    try:
        wait_for(settled, timeout, interval=0.5, what="the database to match the ground truth")
    except AssertionError:
        raise AssertionError(f"database differs from ground truth: {report}") from None


def test_daemon_rides_out_a_database_outage_and_a_kill_9_storing_every_trade_once(
    tmp_path: Path, pg_database: Database
) -> None:
    server = pg_database.server
    sim = start_sim(tmp_path, "--symbols", "4", "--rate", "800", "--seed", "11", "--drop-rate", "0.01")
    try:
        symbols = list(sim.truth())
        config = write_pg_config(tmp_path, sim, symbols, pg_database)
        first = start_daemon(tmp_path, config, log_name="first.log")
        wait_for(lambda: sum(map(len, stored_trade_ids(pg_database).values())) > 1000, 30, what="trades stored")
        server.stop(immediate=True)  # the database crashes; the daemon keeps receiving and retrying
        time.sleep(3)
        assert first.proc.poll() is None, first.log()
        server.start()
        recovered = re.compile(r"write succeeded after|back after \d+ failed attempts; replaying|spool replayed; back to live")
        wait_for(lambda: recovered.search(first.log()), 40, what="the sink to recover")  # replay probes back off up to 10 s
        first.proc.kill()  # SIGKILL: no flush, no goodbye
        first.proc.wait()
        time.sleep(2)  # the market moves on while the daemon is down
        second = start_daemon(tmp_path, config, state_dir=first.state_dir, log_name="second.log")
        time.sleep(5)
        wait_exactly_once(pg_database, sim)
        assert "resuming from stored checkpoints" in second.log()
        assert stop_process(second.proc) == 0
        with psycopg.connect(pg_database.conninfo) as conn:
            books = conn.execute("SELECT count(DISTINCT symbol) FROM books").fetchone()[0]
            checkpoints = dict(conn.execute("SELECT symbol, trade_id FROM checkpoints WHERE venue = 'binance'"))
            assets = {s for (s,) in conn.execute("SELECT symbol FROM assets")}
        assert books == len(symbols)
        assert set(checkpoints) == set(symbols) == assets
    finally:
        server.start()
        sim.stop()
