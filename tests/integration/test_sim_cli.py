"""The simulator as a process, the way test fixtures and benchmarks start it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("entry", [["-m", "ingestd.sim"], ["-m", "ingestd", "sim"]])
def test_ports_file_then_clean_exit_on_sigterm(tmp_path, entry):
    ports_file = tmp_path / "ports.json"
    process = subprocess.Popen(
        [sys.executable, *entry, "--ports-file", str(ports_file), "--symbols", "BTCUSDT,ETHUSDT", "--halted", "ETHUSDT"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not ports_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.02)
        ports = json.loads(ports_file.read_text())
        assert ports["pid"] == process.pid
        assert ports["ws_url"].startswith("ws://127.0.0.1:") and ports["rest_url"].startswith("http://127.0.0.1:")
        with urllib.request.urlopen(ports["rest_url"] + "/api/v3/exchangeInfo", timeout=5) as response:
            statuses = {s["symbol"]: s["status"] for s in json.load(response)["symbols"]}
        assert statuses == {"BTCUSDT": "TRADING", "ETHUSDT": "HALT"}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    log = output.decode()
    assert "ws_url=" + ports["ws_url"] in log and "rest_url=" + ports["rest_url"] in log
    assert "Traceback" not in log


def test_bad_arguments_are_reported_not_raised():
    result = subprocess.run(
        [sys.executable, "-m", "ingestd.sim", "--halted", "NOPEUSDT", "--duration", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2 and "NOPEUSDT" in result.stderr and "Traceback" not in result.stderr
