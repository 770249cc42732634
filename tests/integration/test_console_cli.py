"""`ingestd-console --once` and `--help`, as a script would run them, against a live daemon."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.integration.test_console_tmux import REPO, live_daemon  # noqa: F401  (fixture: a real `ingestd run`)


def test_once_prints_a_plain_table(live_daemon):
    out = subprocess.run([sys.executable, "-m", "ingestd_console.app", "--runtime-dir", str(live_daemon), "--once",
                          "--interval", "0.3"], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split()[:4] == ["INSTANCE", "STATE", "CONNS", "MSG/S"]
    assert re.match(r"binance\s+up\s+1/1\s+\d", row), row


def test_once_without_instances_exits_1(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ingestd_console.app", "--runtime-dir", str(tmp_path), "--once"],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 1
    assert "no instance found" in out.stderr and "--socket" in out.stderr
    out = subprocess.run([sys.executable, "-m", "ingestd_console.app", "--no-discover",
                          "--socket", str(tmp_path / "x" / "stats.sock"), "--once"],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 1
    assert "x" in out.stdout and "gone" in out.stdout  # the table still says what was tried
    assert "no socket" in out.stderr and "no instance answered" in out.stderr


def test_help_teaches():
    out = subprocess.run([sys.executable, "-m", "ingestd_console.app", "--help"], capture_output=True, text=True,
                         timeout=30, cwd=REPO)
    assert out.returncode == 0
    for words in ("/run/ingestd/<instance>/stats.sock", "group ingestd", "--once", "NO_COLOR", "Enter",
                  "exit status", "MSG/S"):
        assert words in out.stdout, words
