"""The daemon speaks systemd's notify protocol: a real `ingestd run` process, a datagram socket as
NOTIFY_SOCKET, and the watchdog armed through WATCHDOG_USEC, as systemd would do it."""

from __future__ import annotations

import fnmatch
import signal
import socket
import time

import pytest

from tests.harness import start_daemon, start_sim, stop_process, stored_trade_ids, wait_for, write_config

pytestmark = pytest.mark.slow


class NotifyListener:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def wait_for(self, line: str, timeout: float) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for at, seen in self.messages:
                if fnmatch.fnmatchcase(seen, line):
                    return at
            self.pump(0.2)
        raise AssertionError(f"no {line!r} within {timeout}s; got {[m for _, m in self.messages][-10:]}")

    def since(self, t: float) -> list[str]:
        return [m for at, m in self.messages if at >= t]


def test_ready_status_watchdog_reload_wedge_and_stopping(tmp_path):
    sim = start_sim(tmp_path, "--symbols", "4", "--rate", "300", "--seed", "2")
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        a, b, c, d = list(sim.truth())
        config = write_config(tmp_path, sim, [a, b])
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}  # ping every 1 s
        daemon = start_daemon(tmp_path, config, env=env)

        ready_at = listener.wait_for("READY=1", 20)
        listener.wait_for("STATUS=binance: */* conns*", 10)
        listener.pump(3.5)
        pings = [at for at, m in listener.messages if m == "WATCHDOG=1" and at >= ready_at]
        assert len(pings) >= 3, listener.messages[-10:]
        gaps = [b_ - a_ for a_, b_ in zip(pings, pings[1:])]
        assert all(0.5 < g < 1.6 for g in gaps), gaps  # WATCHDOG_USEC / 2

        # SIGHUP applies a symbol change (c added, b removed) between RELOADING=1 and READY=1
        config.write_text(config.read_text().replace(f'symbols = ["{a}", "{b}"]', f'symbols = ["{a}", "{c}"]'))
        before_reload = time.monotonic()
        daemon.proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING=1", 10)
        listener.pump(1)
        after = listener.since(before_reload)
        assert "READY=1" in after[after.index("RELOADING=1"):], after
        wait_for(lambda: c in stored_trade_ids(daemon.db), 15, what=f"{c} stored after the reload")
        assert "symbol list changed" in daemon.log()

        # A wedged feed: the loop is alive, but the pings stop.
        daemon.proc.send_signal(signal.SIGUSR2)
        listener.pump(1.5)  # the heartbeat goes stale after one interval
        wedged_at = time.monotonic()
        listener.pump(3)
        assert "WATCHDOG=1" not in listener.since(wedged_at), listener.since(wedged_at)
        assert daemon.proc.poll() is None  # systemd, not the daemon, decides to restart it

        daemon.proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", 10)
        daemon.proc.wait(15)
    finally:
        listener.sock.close()
        sim.stop()
