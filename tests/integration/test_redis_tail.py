"""`ingestd tail` as a user runs it: a subprocess against a real redis-server."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ingestd.config import RedisSinkConfig
from ingestd.model import Trade
from ingestd.sinks.redis_streams import RedisStreamsSink
from ingestd.tail import format_entry, printable
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_123_456


def trade(trade_id: int, symbol: str = "BTCUSDT", side: str = "buy") -> Trade:
    return Trade("binance", symbol, trade_id, 65_000.5, 0.125, side, T0 + trade_id, T0)


@pytest.fixture
def sink(redis_url):
    s = RedisStreamsSink("redis", RedisSinkConfig(name="redis", type="redis", url=redis_url))
    s.open()
    yield s
    s.close()


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "INGESTD_CONFIG")}
    e["INGESTD_CONFIG"] = "/nonexistent/ingestd.toml"  # no config: defaults
    e["PYTHONUNBUFFERED"] = "1"
    e.update(extra)
    return e


def tail(*args: str, environ: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingestd", "tail", *args], cwd=REPO, env=environ or env(),
                          capture_output=True, text=True, timeout=timeout)


def line(trade_id: int, side: str = "buy") -> str:
    return f"2023-11-14T22:13:20.{123456 + trade_id:06d}  {side:<4}        0.125 @ 65000.5      #{trade_id}"


def test_last_n_trades_oldest_first(sink, redis_url):
    sink.write([trade(i) for i in range(1, 31)])
    done = tail("BTCUSDT", "-n", "5", "--url", redis_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [line(i) for i in range(26, 31)]
    assert done.stderr == ""
    default = tail("BTCUSDT", "--url", redis_url)
    assert default.stdout.splitlines() == [line(i) for i in range(21, 31)]  # 10, like test_consumer.py


def test_a_missing_stream_says_so(redis_url):
    done = tail("NOPE", "--url", redis_url)
    assert done.returncode == 0 and done.stdout == ""
    assert "no stream trades:NOPE" in done.stderr


def test_list_shows_the_sinks_streams_with_their_lengths(sink, redis_url, redis_server):
    sink.write([trade(i) for i in range(1, 4)] + [trade(i, "ETHUSDT") for i in range(1, 8)])
    client = redis_server.client()
    client.set("trades:NOTASTREAM", "x")  # SCAN ... TYPE stream skips it
    client.xadd("books:BTCUSDT", {"a": "b"})
    client.xadd("somebody:else", {"a": "b"})  # matches none of the sink's templates
    client.close()
    done = tail("--list", "--url", redis_url)
    assert done.returncode == 0, done.stderr
    assert [row.split() for row in done.stdout.splitlines()] == [
        ["books:BTCUSDT", "1"], ["trades:BTCUSDT", "3"], ["trades:ETHUSDT", "7"]
    ]


def test_follow_prints_new_trades_and_ctrl_c_exits_quietly(sink, redis_url):
    sink.write([trade(i) for i in range(1, 6)])
    proc = subprocess.Popen([sys.executable, "-m", "ingestd", "tail", "BTCUSDT", "-n", "2", "--follow",
                             "--url", redis_url], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert read_lines(proc, 2, timeout=15) == [line(4), line(5)]
        sink.write([trade(i) for i in range(6, 9)])
        assert read_lines(proc, 3, timeout=10) == [line(6), line(7), line(8)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert proc.stderr.read() == ""  # quietly: no traceback, no "KeyboardInterrupt"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_follow_an_empty_stream_from_its_start(redis_url, sink):
    proc = subprocess.Popen([sys.executable, "-m", "ingestd", "tail", "NEWUSDT", "-n", "0", "-f", "--url", redis_url],
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # it is blocked in XREAD by now (or about to be: it reads from 0-0, not $)
        sink.write([trade(1, "NEWUSDT"), trade(2, "NEWUSDT")])
        assert read_lines(proc, 2, timeout=10) == [line(1), line(2)]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def read_lines(proc: subprocess.Popen, n: int, timeout: float) -> list[str]:
    """The next n lines of stdout, read by a thread (a select on a buffered pipe would miss lines
    already in the buffer)."""
    reader = getattr(proc, "_lines", None)
    if reader is None:
        reader = proc._lines = queue.Queue()

        def pump() -> None:
            for text in proc.stdout:
                reader.put(text.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < n:
        try:
            lines.append(reader.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"got {lines} after {timeout}s (exit status {proc.poll()})") from None
    return lines


def test_url_from_the_environment_then_the_config(sink, redis_url, tmp_path):
    sink.write([trade(1)])
    assert tail("BTCUSDT", environ=env(REDIS_URL=redis_url)).stdout.splitlines() == [line(1)]
    config = tmp_path / "ingestd.toml"
    config.write_text(f'[sinks.r]\ntype = "redis"\nurl = {{ env = "MY_REDIS" }}\ntrades_stream = "trades:{{symbol}}"\n')
    found = tail("BTCUSDT", "--config", str(config), environ=env(MY_REDIS=redis_url))
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines() == [line(1)]
    # --url wins over both.
    dead = "redis://127.0.0.1:1/0"
    assert tail("BTCUSDT", "--url", dead, environ=env(REDIS_URL=redis_url)).returncode == 1


def test_an_invalid_config_is_reported_unless_the_url_is_given(redis_url, sink, tmp_path):
    sink.write([trade(1)])
    config = tmp_path / "bad.toml"
    config.write_text('[sinks.r]\ntype = "redis"\nstream_maxlen = "lots"\n')
    bad = tail("BTCUSDT", "--config", str(config))
    assert bad.returncode == 2 and "sinks.r.stream_maxlen" in bad.stderr
    ok = tail("BTCUSDT", "--config", str(config), "--url", redis_url)
    assert ok.returncode == 0 and ok.stdout.splitlines() == [line(1)]


def test_unreachable_server_exits_1_without_a_traceback_or_the_password():
    done = tail("BTCUSDT", "--url", "redis://:sekrit-pw@127.0.0.1:1/0")
    assert done.returncode == 1
    assert "ingestd tail: redis://127.0.0.1:1/0" in done.stderr
    assert "Traceback" not in done.stderr and "sekrit-pw" not in done.stderr


def test_usage_errors():
    assert tail().returncode == 2
    assert tail("BTCUSDT", "-n", "-1").returncode == 2
    helped = tail("--help")
    assert helped.returncode == 0 and "--follow" in helped.stdout and "$REDIS_URL" in helped.stdout


def test_crafted_values_cannot_drive_the_terminal(sink, redis_url):
    sink.write([trade(1, side="\x1b[2J\x1b[31mbuy\r\n")])
    done = tail("BTCUSDT", "--url", redis_url)
    assert "\x1b" not in done.stdout and "\\x1b[2J\\x1b[31mbuy\\r\\n" in done.stdout
    assert len(done.stdout.splitlines()) == 1


def test_format_of_foreign_entries():
    assert format_entry(b"1-0", {b"price": b"1"}) == "1-0  price=1"
    assert printable("a\tb\u202e") == "a\\tb\\u202e"
