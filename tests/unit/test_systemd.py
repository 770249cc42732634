"""sd_notify as systemd sees it: datagrams on a real AF_UNIX socket named by NOTIFY_SOCKET."""

import re
import socket

import pytest
import trio

from ingestd.stats import StatsRegistry
from ingestd.systemd import Notifier, StatusLine, feeds_fresh, run_watchdog, watchdog_interval_s


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_watchdog_interval_reads_usec_and_pid():
    assert watchdog_interval_s({}, 1) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, 1) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 1) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, 1) is None  # a parent's
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}, 1) is None


def test_messages_reach_the_socket(notify_socket):
    n = Notifier()
    assert n.enabled
    n.ready("binance: starting")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=binance: starting"
    n.status("two\nlines → one")
    assert notify_socket.recv(4096) == b"STATUS=two lines ? one"
    n.reloading()
    n.stopping()
    assert [notify_socket.recv(4096), notify_socket.recv(4096)] == [b"RELOADING=1", b"STOPPING=1"]


def test_outside_systemd_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.ready()
    n.watchdog()


def test_status_line_shape():
    stats = StatsRegistry("binance")
    stats.gauges["binance.connections_planned"] = 2
    c = stats.connection("binance/0#1")
    c.state, c.messages = "up", 1000
    line = StatusLine("binance")
    line.render(stats.snapshot(), now=10.0)
    c.messages = 13_300
    stats.lag.record_many([45_000] * 10)
    # lag comes from a log-linear histogram, exact to within ~6 %
    assert re.fullmatch(r"binance: 1/2 conns, 12\.3k msg/s, lag p99 4[2-8] ms, 0 alerts",
                        line.render(stats.snapshot(), now=11.0, alerts=0))


@pytest.mark.trio
async def test_watchdog_pings_only_while_feeds_are_fresh(notify_socket, monkeypatch, autojump_clock):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # ping every second
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notify_socket.setblocking(False)
    stats = StatsRegistry("binance")
    n = Notifier()
    clock = {"now": 0.0}
    monkeypatch.setattr("ingestd.stats.time.monotonic", lambda: clock["now"])

    def pings():
        count = 0
        while True:
            try:
                assert notify_socket.recv(4096) == b"WATCHDOG=1"
                count += 1
            except BlockingIOError:
                return count

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_watchdog, n, stats)
        stats.heartbeat("feed.binance")
        for _ in range(3):  # a feed that keeps beating: a ping a second
            await trio.sleep(1)
            clock["now"] += 1
            stats.heartbeat("feed.binance")
        assert pings() >= 3
        clock["now"] += 5  # the feed wedges: no heartbeat for 5 s
        await trio.sleep(3)
        assert pings() == 0
        assert not feeds_fresh(stats, 1.0)
        stats.heartbeat("feed.binance")  # it recovers
        await trio.sleep(1.5)
        assert pings() >= 1
        nursery.cancel_scope.cancel()
