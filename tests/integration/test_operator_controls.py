"""The operator's control verbs against real processes: the Binance simulator, `ingestd run binance`
with a datagram socket as NOTIFY_SOCKET, and `ingestd pause|resume|flush|trigger|reconnect` run as a
user would. Judged from outside: the simulator's ground truth, the SQLite file, the stats socket,
the sd_notify messages and the daemon's log."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from ingestd.statsock import protocol as p
from tests.harness import (REPO, start_daemon, start_sim, start_venue_sim, stop_process, stored_trade_ids, wait_for,
                           write_config, write_family_config)
from tests.integration.test_binance_acceptance import assert_books_match_reference, wait_exactly_once
from tests.integration.test_coingecko_feed import API_KEY, COINS, feed_config, stored_prices
from tests.integration.test_systemd_notify import NotifyListener

pytestmark = pytest.mark.slow

# Alert rules tight enough that a pause of a few seconds would trip them if it counted as an outage.
TIGHT_ALERTS = """
[alerts]
interval_s = 0.5
ws_down_for_s = 1
no_data_s = 2
clear_for_s = 1
"""


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingestd", "--config", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def snapshot(path: Path) -> dict:
    """One `snapshot` over the stats socket, with the shared protocol."""
    conn = p.Connection("client")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(p.encode(p.SnapshotRequest()))
        while True:
            data = s.recv(1 << 20)
            for event in conn.receive_data(data):
                assert isinstance(event, p.Snapshot), event
                return event.data
            assert data, "the daemon closed the socket without a snapshot"


def trade_count(db: Path) -> int:
    return sum(len(ids) for ids in stored_trade_ids(db).values())


def notified_since(listener: NotifyListener, pattern: str, since: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(fnmatch.fnmatchcase(m, pattern) for m in listener.since(since)):
        assert time.monotonic() < deadline, f"no {pattern!r} within {timeout}s: {listener.since(since)[-10:]}"
        listener.pump(0.2)


def firing_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "alert " in line and " firing" in line]


def test_pause_resume_flush_and_trigger(tmp_path):
    sim = start_sim(tmp_path, "--symbols", "3", "--rate", "300", "--seed", "11")
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        symbols = list(sim.truth())
        config = write_config(tmp_path, sim, symbols, book_levels=100)  # whole books, compared at the end
        # A long linger: rows reach SQLite only through `flush` (or 10 s later), so flush is visible.
        config.write_text(config.read_text().replace("linger_ms = 20", "linger_ms = 10000") + TIGHT_ALERTS)
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}  # a ping a second
        daemon = start_daemon(tmp_path, config, env=env)
        sock = tmp_path / "stats.sock"
        listener.wait_for("READY=1", 20)
        assert snapshot(sock)["state"] == "running"

        # flush: what the runner holds now goes to SQLite at once, and the reply says how much.
        time.sleep(1.5)
        before = trade_count(daemon.db)
        out = ctl(config, "flush", "binance", "--json")
        assert out.returncode == 0, out.stderr
        reply = json.loads(out.stdout)
        local = reply["data"]["sinks"]["local"]
        assert reply["ok"] and local["done"] and local["state"] == "live"
        assert local["records"] > 0 and reply["data"]["records"] == local["records"]
        assert trade_count(daemon.db) > before  # stored now, not after the 10 s linger
        out = ctl(config, "flush", "binance")
        assert out.returncode == 0 and "binance: flushed" in out.stdout and "local:" in out.stdout, out

        # pause: connections closed (on the venue's side too), shown everywhere, nothing stored.
        out = ctl(config, "pause", "binance")
        assert out.returncode == 0 and "binance: paused since" in out.stdout, out
        snap = wait_for(lambda: (s := snapshot(sock))["state"] == "paused" and s, 10, what="state paused")
        assert snap["connections"] and {c["state"] for c in snap["connections"]} == {"paused"}
        assert snap["gauges"]["binance.paused"] == 1 and snap["paused_since"]
        wait_for(lambda: sim.get("/_sim/stats")["connections_open"] == 0, 10, what="the venue sees no connection")
        listener.wait_for("STATUS=binance: paused by operator, 0/1 conns*", 10)
        assert ctl(config, "pause", "binance").stdout.startswith("binance: already paused")
        out = ctl(config, "reconnect", "binance")
        assert out.returncode == 1 and "binance is paused; `resume` reconnects it" in out.stderr

        assert ctl(config, "flush", "binance").returncode == 0  # what arrived before the pause
        stored = trade_count(daemon.db)
        made = sim.get("/_sim/stats")["trades_made"]
        pause_started = time.monotonic()
        listener.pump(4.5)
        assert trade_count(daemon.db) == stored
        assert sim.get("/_sim/stats")["trades_made"] > made + 100  # the market went on without us
        pings = [m for m in listener.since(pause_started) if m == "WATCHDOG=1"]
        assert len(pings) >= 3, listener.since(pause_started)  # paused on purpose is healthy
        assert firing_lines(daemon.log()) == []  # no WebSocketDown / NoDataReceived for a pause
        assert [a for a in snapshot(sock)["alerts"] if a["state"] == "firing"] == []

        # trigger: Binance does not poll, and says who does.
        out = ctl(config, "trigger", "binance")
        assert out.returncode == 1
        assert "binance does not poll; trigger applies to " in out.stderr and "coingecko" in out.stderr

        # resume: reconnect, catch up over REST; every trade of the ground truth stored exactly once.
        counters = snapshot(sock)["counters"]
        backfilled, snapshots = counters.get("binance.trades_backfilled", 0), counters["binance.snapshots"]
        resumed_at = time.monotonic()
        out = ctl(config, "resume", "binance")
        assert out.returncode == 0 and "binance: resumed after" in out.stdout, out
        wait_for(lambda: {c["state"] for c in snapshot(sock)["connections"]} == {"up"}, 15, what="reconnected")
        notified_since(listener, "STATUS=binance: 1/1 conns*", resumed_at, 10)
        assert snapshot(sock)["state"] == "running"
        assert ctl(config, "resume", "binance").stdout.startswith("binance: not paused")
        wait_for(lambda: snapshot(sock)["counters"].get("binance.trades_backfilled", 0) > backfilled + 100, 20,
                 what="the trades made while paused fetched over REST")
        assert snapshot(sock)["counters"]["binance.snapshots"] > snapshots  # the books resync
        assert firing_lines(daemon.log()) == []  # nor after the resume (the venue came back at once)
        assert ctl(config, "flush", "binance").returncode == 0
        try:
            wait_exactly_once(daemon.db, sim)  # (it pauses the simulator: from here on, silence is real)
        except AssertionError as exc:  # seen once in a CI run on a loaded machine: keep what explains it
            counters = snapshot(sock)["counters"]
            feed = {k: v for k, v in counters.items() if k.startswith(("binance.", "sink.", "spool."))}
            notable = [line for line in daemon.log().splitlines() if " debug " not in line][-40:]
            raise AssertionError(f"{exc}\ncounters: {feed}\ndaemon log:\n" + "\n".join(notable)) from None
        assert_books_match_reference(daemon.db, sim, symbols)  # resynced from fresh snapshots

        out = ctl(config, "reconnect", "binance")
        assert out.returncode == 0 and out.stdout.strip() == "binance: replacing 1 connection"
        assert stop_process(daemon.proc) == 0
    finally:
        listener.sock.close()
        sim.stop()


def test_the_socket_answers_through_the_drain(tmp_path):
    """SIGTERM with a sink that is down: the drain lasts until the shutdown deadline, and the stats
    socket keeps answering, saying "draining", until the runners are done."""
    sim = start_sim(tmp_path, "--symbols", "2", "--rate", "100", "--seed", "12")
    try:
        sinks = textwrap.dedent("""
            [sinks.local]
            type = "sqlite"
            path = "ingestd.sqlite"

            [sinks.pg]
            type = "postgres"
            host = "127.0.0.1"
            port = 1
            connect_timeout_s = 0.5
            """)
        config = write_config(tmp_path, sim, list(sim.truth()), sinks=["local", "pg"])
        text = config.read_text()
        config.write_text(text[:text.index("[sinks.local]")] + sinks + text[text.index("[feeds.binance]"):])
        daemon = start_daemon(tmp_path, config)
        sock = tmp_path / "stats.sock"
        wait_for(lambda: sock.exists() and snapshot(sock)["state"] == "running", 30, what="ready")
        daemon.proc.send_signal(signal.SIGTERM)
        states = []
        deadline = time.monotonic() + 15
        while daemon.proc.poll() is None and time.monotonic() < deadline:
            try:
                states.append(snapshot(sock)["state"])
            except OSError:
                pass  # gone at the very end
            time.sleep(0.1)
        assert daemon.proc.wait(15) == 0
        assert states.count("draining") >= 5, states  # ~3 s of drain, sampled every 0.1 s
        assert not sock.exists()
    finally:
        sim.stop()


# --- authorization: a peer running as another uid --------------------------------------------------

NOBODY = NOGROUP = 65534

# The CLI itself, as `nobody`: it imports everything as root (nobody cannot read this virtualenv),
# then drops its privileges before connecting, so SO_PEERCRED reports uid nobody to the daemon.
AS_NOBODY = textwrap.dedent("""
    import os, sys
    from ingestd.cli import build_parser, main
    build_parser()  # imports every command module now
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def shared_dir():
    """A directory another uid can reach (pytest's tmp_path is under a 0700 directory)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    d = Path(tempfile.mkdtemp(prefix="ingestd-ctl-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def ctl_as_nobody(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", AS_NOBODY, *args], cwd="/", capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_every_control_verb_is_refused_to_an_unauthorised_peer(tmp_path, shared_dir):
    sim = start_sim(tmp_path, "--symbols", "2", "--rate", "100", "--seed", "13")
    try:
        config = write_config(tmp_path, sim, list(sim.truth()))
        sock = shared_dir / "stats.sock"
        config.write_text(config.read_text().replace(str(tmp_path / "stats.sock"), str(sock)))
        daemon = start_daemon(tmp_path, config)
        wait_for(lambda: sock.exists() and snapshot(sock)["state"] == "running", 30, what="ready")

        # Without the socket's group, nobody cannot even connect (mode 0660 root:root).
        out = ctl_as_nobody("pause", "binance", "--socket", str(sock))
        assert out.returncode == 1 and "permission denied (it is mode 0660" in out.stderr, out

        # In the socket's group (it may read stats) but not root nor in the admin group: refused,
        # every verb, before the verb is even looked at (trigger would otherwise say "does not poll").
        os.chown(sock, -1, NOGROUP)
        for verb in ("pause", "resume", "reconnect", "flush", "trigger"):
            out = ctl_as_nobody(verb, "binance", "--socket", str(sock))
            assert out.returncode == 1, out
            assert f"ingestd: {verb} binance refused: permission denied" in out.stderr, out.stderr
            assert "root or membership in the ingestd group" in out.stderr
        snap = snapshot(sock)
        assert snap["state"] == "running" and {c["state"] for c in snap["connections"]} == {"up"}
        refusals = [line for line in daemon.log().splitlines() if "control verb refused: permission denied" in line]
        assert len(refusals) == 5 and all("uid=65534" in line for line in refusals), refusals
        assert stop_process(daemon.proc) == 0
    finally:
        sim.stop()


# --- trigger on a polling feed ---------------------------------------------------------------------


def test_trigger_runs_one_coingecko_poll_now(tmp_path):
    sim = start_venue_sim(tmp_path, "coingecko", "--seed", "7", "--api-key", API_KEY)
    try:
        # Scheduled once a year and no discovery: whatever is stored, the trigger fetched.
        config = write_family_config(tmp_path, "coingecko",
                                     feed_config(tmp_path, sim, prices_cron="0 0 1 1 *", discovery=False))
        daemon = start_daemon(tmp_path, config, instance="coingecko", env={"COINGECKO_API_KEY": API_KEY})
        sock = tmp_path / "coingecko-stats.sock"
        wait_for(lambda: sock.exists() or daemon.proc.poll() is not None, 20, what="the stats socket")
        time.sleep(1)
        assert stored_prices(daemon.db) == []
        out = ctl(config, "trigger", "coingecko", "--json")
        assert out.returncode == 0, out.stderr
        reply = json.loads(out.stdout)
        assert reply["ok"] and reply["data"]["records"] == len(COINS)
        assert ctl(config, "flush", "coingecko").returncode == 0
        assert {row[0] for row in stored_prices(daemon.db)} == set(COINS)

        assert ctl(config, "pause", "coingecko").returncode == 0
        out = ctl(config, "trigger", "coingecko")
        assert out.returncode == 1 and "coingecko is paused; `resume` it first" in out.stderr
        assert ctl(config, "resume", "coingecko").returncode == 0
        out = ctl(config, "trigger", "coingecko")
        assert out.returncode == 0 and out.stdout.startswith("coingecko: trigger done: records=4"), out
        assert stop_process(daemon.proc) == 0
    finally:
        sim.stop()
