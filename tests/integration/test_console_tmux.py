"""ingestd-console in a real terminal: tmux at 80x24, keys sent with send-keys, the screen read back
with capture-pane, against a real daemon: `ingestd run binance` on the simulator (tests/harness.py),
serving its stats socket under a temporary runtime_dir as it would under /run/ingestd."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import REPO, start_daemon, start_sim, stop_process, wait_for, write_config

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (Debian: apt-get install tmux)")


class Tmux:
    """A private tmux server (-L), so a developer's own sessions are never touched."""

    def __init__(self) -> None:
        self.server = f"ingestd-test-{os.getpid()}"

    def __call__(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "console")

    def wait_for(self, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if re.search(pattern, text, re.M):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the screen after {timeout}s:\n{text}")
            time.sleep(0.1)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, timeout=10)


def runtime_config(tmp_path: Path, sim) -> Path:
    """The harness's config with daemon.runtime_dir instead of an explicit daemon.stats_socket, so the
    daemon picks <runtime_dir>/<instance>/stats.sock and the console discovers it as in production."""
    config = write_config(tmp_path, sim, list(SYMBOLS))
    text = re.sub(r"(?m)^stats_socket = .*\n", "", config.read_text())
    text = text.replace("[daemon]\n", f'[daemon]\nruntime_dir = "{tmp_path / "run"}"\n', 1)
    config.write_text(text)
    return config


@pytest.fixture
def live_daemon(tmp_path):
    """A real `ingestd run binance` process; yields the runtime dir holding binance/stats.sock."""
    sim = start_sim(tmp_path, "--symbols", ",".join(SYMBOLS), "--rate", "200")
    daemon = start_daemon(tmp_path, runtime_config(tmp_path, sim))
    sock = tmp_path / "run" / "binance" / "stats.sock"
    try:
        wait_for(lambda: sock.exists() or daemon.proc.poll() is not None, 20, 0.05, "the stats socket")
        assert daemon.proc.poll() is None, daemon.log()
        yield tmp_path / "run"
    finally:
        stop_process(daemon.proc)
        sim.stop()
    assert not sock.exists()  # removed on a clean stop


def test_console_in_tmux(live_daemon):
    tmux = Tmux()
    command = (f"{sys.executable} -m ingestd_console.app --runtime-dir {live_daemon} --interval 0.5; "
               "echo console-exited=$?; sleep 60")
    try:
        tmux("new-session", "-d", "-s", "console", "-x", "80", "-y", "24", "-c", str(REPO), command)
        screen = tmux.wait_for(r"^ binance\s+up\s+1/1\s+\d+")
        lines = screen.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        assert "ingestd-console" in lines[0] and "1 socket (1 up)" in lines[0] and "every 0.5s" in lines[0]
        assert re.search(r"INSTANCE\s+STATE\s+CONNS\s+MSG/S", screen)
        assert "Quit" in lines[-1]  # the footer shows the keys

        tmux("send-keys", "-t", "console", "Enter")
        screen = tmux.wait_for(r"Connections\s+Symbols\s+Sinks")
        assert re.search(r"binance/\d+#\d+\s+up", screen)
        tmux("send-keys", "-t", "console", "Escape")
        tmux.wait_for(r"INSTANCE\s+STATE")

        tmux("send-keys", "-t", "console", "q")
        tmux.wait_for(r"^console-exited=0$")
    finally:
        tmux.kill()
