"""ingestd-console in a real terminal: tmux at 80x24, keys sent with send-keys, the screen read back
with capture-pane, against a live daemon (simulator + daemon + stats socket in a helper process,
`python -m ingestd.statsock.demo`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

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


@pytest.fixture
def live_daemon(tmp_path):
    ready = tmp_path / "ready"
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestd.statsock.demo", "--runtime-dir", str(tmp_path / "run"),
         "--state-dir", str(tmp_path / "state"), "--shards", "1", "--symbols", "3", "--rate", "300",
         "--ready-file", str(ready)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the demo daemon did not start:\n" + (tmp_path / "demo.log").read_text())
            time.sleep(0.05)
        yield tmp_path / "run"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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
        assert re.search(r"binance/0#\d+\s+up", screen)
        tmux("send-keys", "-t", "console", "Escape")
        tmux.wait_for(r"INSTANCE\s+STATE")

        tmux("send-keys", "-t", "console", "q")
        tmux.wait_for(r"^console-exited=0$")
    finally:
        tmux.kill()
