"""Real processes for acceptance tests: the simulator and the daemon, started as a user would.

Both run through the installed CLI (`python -m ingestd ...`), talk over loopback sockets, and are
observed only from outside: the simulator's control endpoints and the daemon's SQLite file.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]

# Every process a test starts, so teardown can stop what a failing test left running.
_started: list[subprocess.Popen] = []


def _spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(
        args, cwd=REPO, env={**_env(), **(env or {})}, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT
    )
    _started.append(proc)
    return proc


def stop_all_started() -> None:
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("JOURNAL_STREAM", None)
    return env


@dataclass
class SimProcess:
    proc: subprocess.Popen
    ws_url: str
    rest_url: str
    log_path: Path

    def get(self, path: str):
        with urllib.request.urlopen(self.rest_url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str) -> None:
        req = urllib.request.Request(self.rest_url + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def truth(self) -> dict[str, list[int]]:
        return self.get("/_sim/truth")

    def book(self, symbol: str) -> dict:
        return self.get(f"/_sim/book?symbol={symbol}")

    def stop(self) -> None:
        stop_process(self.proc)


def start_sim(tmp: Path, *args: str) -> SimProcess:
    ports = tmp / "sim-ports.json"
    ports.unlink(missing_ok=True)  # a stale file would point at a dead simulator
    log_path = tmp / "sim.log"
    proc = _spawn([sys.executable, "-m", "ingestd", "sim", "--ports-file", str(ports), *args], log_path)
    deadline = time.monotonic() + 20
    while not ports.exists() or not ports.read_text().strip().endswith("}"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"simulator did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    info = json.loads(ports.read_text())
    return SimProcess(proc, info["ws_url"], info["rest_url"], log_path)


@dataclass
class VenueSim:
    """A simulator of another feed family (`python -m ingestd.sim.<family>`). `urls` is the JSON
    its --ports-file holds; `urls["control_url"]` serves its /_sim/* endpoints."""

    proc: subprocess.Popen
    urls: dict
    log_path: Path

    def get(self, path: str):
        with urllib.request.urlopen(self.urls["control_url"] + path, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(self.urls["control_url"] + path, data=data, method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def stop(self) -> None:
        stop_process(self.proc)


def start_venue_sim(tmp: Path, family: str, *args: str) -> VenueSim:
    ports = tmp / f"sim-{family}-ports.json"
    ports.unlink(missing_ok=True)
    log_path = tmp / f"sim-{family}.log"
    proc = _spawn([sys.executable, "-m", f"ingestd.sim.{family}", "--ports-file", str(ports), *args], log_path)
    deadline = time.monotonic() + 20
    while not ports.exists() or not ports.read_text().strip().endswith("}"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{family} simulator did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return VenueSim(proc, json.loads(ports.read_text()), log_path)


def write_family_config(tmp: Path, family: str, feed: dict, *, sinks_toml: str | None = None,
                        name: str = "ingestd.toml") -> Path:
    """A config with one [feeds.<family>] table (values JSON-encoded, which TOML accepts for
    strings, numbers, booleans and lists) writing to a local SQLite sink unless `sinks_toml` is given."""
    feed = {"sinks": ["local"], **feed}
    sinks_toml = sinks_toml or '[sinks.local]\ntype = "sqlite"\npath = "ingestd.sqlite"\n'
    lines = [f"[feeds.{family}]"] + [f"{k} = {json.dumps(v)}" for k, v in feed.items()]
    text = textwrap.dedent(
        f"""
        [daemon]
        linger_ms = 20
        shutdown_timeout_s = 4.0
        http_port = 0
        stats_socket = "{tmp / (family + '-stats.sock')}"
        """
    ) + sinks_toml + "\n" + "\n".join(lines) + "\n"
    path = tmp / name
    path.write_text(text)
    return path


def write_config(tmp: Path, sim: SimProcess, symbols: list[str], **feed_overrides) -> Path:
    feed = {
        "sinks": ["local"],
        "ws_url": sim.ws_url,
        "rest_url": sim.rest_url,
        "symbols": symbols,
        "fallback_pairs": [],
        "book_interval_ms": 200,
        "reconnect_base_s": 0.1,
        "reconnect_cap_s": 1.0,
        **feed_overrides,
    }
    lines = ["[feeds.binance]"] + [f"{k} = {json.dumps(v)}" for k, v in feed.items()]
    text = textwrap.dedent(
        f"""
        [daemon]
        linger_ms = 20
        shutdown_timeout_s = 4.0
        http_port = 0
        stats_socket = "{tmp / 'stats.sock'}"

        [sinks.local]
        type = "sqlite"
        path = "ingestd.sqlite"
        """
    ) + "\n".join(lines) + "\n"
    path = tmp / "ingestd.toml"
    path.write_text(text)
    return path


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    state_dir: Path
    log_path: Path

    @property
    def db(self) -> Path:
        return self.state_dir / "ingestd.sqlite"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_daemon(tmp: Path, config: Path, *, state_dir: Path | None = None, log_name: str = "daemon.log",
                 env: dict[str, str] | None = None, instance: str = "binance") -> DaemonProcess:
    state_dir = state_dir or tmp / "state"
    log_path = tmp / log_name
    proc = _spawn(
        [sys.executable, "-m", "ingestd", "--config", str(config), "run", instance, "--state-dir", str(state_dir)],
        log_path,
        env,
    )
    return DaemonProcess(proc, state_dir, log_path)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode


def stored_trade_ids(db: Path) -> dict[str, list[int]]:
    """symbol -> every stored trade id, duplicates included (a PK should make them impossible)."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        out: dict[str, list[int]] = {}
        for symbol, trade_id in con.execute("SELECT symbol, trade_id FROM ticks WHERE venue='binance'"):
            out.setdefault(symbol, []).append(trade_id)
        return out
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        con.close()


def count_rows(db: Path, table: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    """wait_for for tests that run inside trio: checks every 50 ms without blocking the event loop."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def missing_and_extra(stored: dict[str, list[int]], truth: dict[str, list[int]], since: dict[str, int]):
    """Compare per symbol, from the first id the daemon could have seen (`since`) to the end."""
    report = {}
    for symbol, ids in truth.items():
        if symbol not in since:
            continue
        expected = {i for i in ids if i >= since[symbol]}
        got = stored.get(symbol, [])
        dups = len(got) - len(set(got))
        missing = expected - set(got)
        extra = set(got) - set(ids)
        if missing or extra or dups:
            # Where the hole is tells a lost tail (last_missing == last_made) from a hole in the middle.
            report[symbol] = {"missing": len(missing), "extra": len(extra), "dups": dups,
                              "first_missing": sorted(missing)[:5], "last_missing": max(missing, default=None),
                              "last_stored": max(got, default=None), "last_made": max(ids, default=None)}
    return report
