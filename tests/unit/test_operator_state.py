"""The run state an operator sees (running, paused, draining): STATUS=, the watchdog, the console."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from ingestd.stats import StatsRegistry
from ingestd.systemd import Notifier, StatusLine, run_watchdog
from ingestd_console.model import GONE, Instance, plain_table
from tests.unit.test_systemd import notify_socket  # noqa: F401  (fixture)


def registry() -> StatsRegistry:
    stats = StatsRegistry("binance")
    stats.gauges["binance.connections_planned"] = 2
    for i in range(2):
        stats.connection(f"binance/{i}#1").state = "paused"
    return stats


@pytest.mark.parametrize("state, head", [
    ("paused", "binance: paused by operator, "),
    ("draining", "binance: draining, "),
    ("running", "binance: "),
    (None, "binance: "),
])
def test_status_line_says_what_the_supervisor_says(state, head):
    snap = registry().snapshot()
    if state is not None:
        snap["state"] = state
    line = StatusLine("binance").render(snap, now=1.0)
    assert line.startswith(head) and re.search(r"0/2 conns, 0 msg/s, lag p99 -, 0 alerts$", line), line


@pytest.mark.trio
async def test_a_paused_feed_keeps_the_watchdog_fed_even_when_its_heartbeat_is_quiet(
        notify_socket, monkeypatch, autojump_clock):  # noqa: F811
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notify_socket.setblocking(False)
    clock = {"now": 0.0}
    monkeypatch.setattr("ingestd.stats.time.monotonic", lambda: clock["now"])
    stats = StatsRegistry("evm")
    stats.heartbeat("feed.evm")
    paused = {"now": True}

    def pings() -> int:
        count = 0
        while True:
            try:
                notify_socket.recv(4096)
                count += 1
            except BlockingIOError:
                return count

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_watchdog, Notifier(), stats, lambda: paused["now"])
        clock["now"] += 30  # a polling feed asleep until resumed: its heartbeat is 30 s old
        await trio.sleep(3.5)
        assert pings() >= 3
        paused["now"] = False  # resumed, and still no progress: the pings stop
        await trio.sleep(0.1)
        pings()
        await trio.sleep(3)
        assert pings() == 0
        nursery.cancel_scope.cancel()


def test_console_shows_the_daemon_state_while_up_and_gone_when_gone():
    inst = Instance(Path("/run/ingestd/binance/stats.sock"))
    base = {"instance": "binance", "started_us": 1, "now_us": 2_000_000, "connections": []}
    inst.apply({**base, "state": "paused"})
    assert inst.shown_state == "paused"
    assert plain_table([inst]).splitlines()[1].split()[:2] == ["binance", "paused"]
    inst.apply({**base, "state": "running"})
    assert inst.shown_state == "up"
    inst.apply({**base, "state": "draining"})
    assert inst.shown_state == "draining"
    inst.lost("refused (daemon not running)")
    assert inst.shown_state == GONE
    inst.apply({k: v for k, v in base.items()})  # a daemon that does not say: as before
    assert inst.shown_state == "up"
