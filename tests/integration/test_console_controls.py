"""ingestd-console's control keys (p p pause, r resume, c reconnect, f flush) against a real daemon:
`ingestd run binance` on the simulator, driven through Textual's pilot at 80x24."""

from __future__ import annotations

import asyncio

import pytest

from ingestd_console.app import ConsoleApp, InstanceScreen
from tests.harness import start_daemon, start_sim, stop_process, wait_for, write_config
from tests.integration.test_console_live import press, row_text, until

pytestmark = pytest.mark.slow


def test_pause_resume_reconnect_and_flush_from_the_instance_screen(tmp_path):
    sim = start_sim(tmp_path, "--symbols", "2", "--rate", "100", "--seed", "21")
    try:
        daemon = start_daemon(tmp_path, write_config(tmp_path, sim, list(sim.truth())))
        sock = tmp_path / "stats.sock"
        wait_for(lambda: sock.exists() or daemon.proc.poll() is not None, 20, what="the stats socket")
        asyncio.run(_drive(sock, daemon))
        assert stop_process(daemon.proc) == 0
    finally:
        sim.stop()


async def _drive(sock, daemon) -> None:
    app = ConsoleApp(sockets=[sock], runtime_dir=None, interval_ms=200, reconnect_s=0.5)
    key = str(sock)

    def daemon_state():
        return (app.instances[key].snapshot or {}).get("state")

    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: key in app.instances and daemon_state() == "running", what="running")
        assert row_text(app, key)[1] == "up"
        await press(pilot, "enter")
        await until(pilot, lambda: isinstance(app.screen, InstanceScreen), what="the instance screen")

        await press(pilot, "p")  # once: only a warning, nothing sent
        await asyncio.sleep(0.6)
        assert daemon_state() == "running" and "verb=pause" not in daemon.log()
        await press(pilot, "p")
        await until(pilot, lambda: daemon_state() == "paused", what="paused")
        await until(pilot, lambda: {c["state"] for c in app.instances[key].connections} == {"paused"},
                    what="connections shown paused")
        assert row_text(app, key)[1] == "paused"

        await press(pilot, "f")
        await until(pilot, lambda: "verb=flush" in daemon.log(), what="flush sent")
        await press(pilot, "r")
        await until(pilot, lambda: daemon_state() == "running" and row_text(app, key)[1] == "up", what="resumed")
        await until(pilot, lambda: {c["state"] for c in app.instances[key].connections} == {"up"}, what="reconnected")
        await press(pilot, "c")
        await until(pilot, lambda: "replaced connection" in daemon.log(), what="a make-before-break reconnect")
        await press(pilot, "q")
