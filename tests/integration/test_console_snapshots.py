"""ingestd-console at 80x24, colour and monochrome, from recorded snapshots (no live data, fixed clock).

Update the SVGs after an intended change with:  .venv/bin/pytest tests/integration/test_console_snapshots.py --snapshot-update
and look at them (tests/integration/__snapshots__/test_console_snapshots/*.svg) before committing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingestd_console.app import ConsoleApp, InstanceScreen

RECORDED = json.loads((Path(__file__).parent / "console_recorded_snapshots.json").read_text())["instances"]
RUN = Path("/run/ingestd")


def recorded_app(*, mono: bool) -> ConsoleApp:
    return ConsoleApp(connect=False, runtime_dir=None, interval_ms=1000, mono=mono, clock=lambda: 0.0)


async def feed_recorded(pilot) -> None:
    app = pilot.app
    app.started = -754.0  # "up 0:12:34" with the fixed clock
    for name in RECORDED:
        app.add_instance(RUN / name / "stats.sock")
    gone = app.add_instance(RUN / "binance-3" / "stats.sock")
    for snaps in zip(*RECORDED.values()):
        for name, snap in zip(RECORDED, snaps):
            app.apply_snapshot(RUN / name / "stats.sock", snap)
    app.mark_lost(gone.key, "refused (daemon not running)")
    await pilot.pause()


async def open_second(pilot) -> None:
    await feed_recorded(pilot)
    await pilot.press("down", "enter")
    await pilot.pause()
    assert isinstance(pilot.app.screen, InstanceScreen)


@pytest.fixture(autouse=True)
def _colour_unless_asked(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)


def test_instances_colour(snap_compare):
    assert snap_compare(recorded_app(mono=False), terminal_size=(80, 24), run_before=feed_recorded)


def test_instances_mono(snap_compare):
    assert snap_compare(recorded_app(mono=True), terminal_size=(80, 24), run_before=feed_recorded)


def test_instance_screen_colour(snap_compare):
    assert snap_compare(recorded_app(mono=False), terminal_size=(80, 24), run_before=open_second)


def test_instance_screen_alerts_mono(snap_compare):
    async def alerts_tab(pilot):
        await open_second(pilot)
        await pilot.press("4")
        await pilot.pause()

    assert snap_compare(recorded_app(mono=True), terminal_size=(80, 24), run_before=alerts_tab)


def test_no_instances(snap_compare, tmp_path):
    app = ConsoleApp(connect=False, runtime_dir=tmp_path / "run", clock=lambda: 0.0)

    async def settle(pilot):
        pilot.app.runtime_dir = Path("/run/ingestd")  # the hint names the directory; keep it stable
        pilot.app.update_panels()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)
