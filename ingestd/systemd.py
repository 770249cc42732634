"""systemd integration: sd_notify READY/STATUS/RELOADING/STOPPING and the watchdog.

Sending is the `sdnotify` package's job. It does not read the watchdog settings, so we do:
`WATCHDOG_USEC` is the unit's WatchdogSec=, and `WATCHDOG_PID`, when set, must name this process
(otherwise the setting belongs to a parent). We ping every WATCHDOG_USEC / 2, as sd_watchdog_enabled(3)
advises.

The ping is conditional. It comes from a task in the main nursery, and only while every feed
reports a fresh heartbeat. A stalled event loop sends nothing at all, and a wedged feed makes the
pinger hold back, so in both cases systemd's watchdog restarts the service. That is the point of
having a watchdog instead of mere liveness.

A feed paused by the operator (the stats socket's `pause`) is healthy: it idles on purpose. The
pings go on while it is paused even if its heartbeat goes quiet (the Binance feed keeps beating
anyway; a polling feed may sleep until resumed). The ping still comes from the main nursery, so a
stalled event loop still misses it, and a feed that does not make progress after `resume` stops it.
STATUS= then reads `binance: paused by operator, 0/4 conns, ...`.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping

import sdnotify
import trio

from ingestd.digits import is_ascii_digits
from ingestd.stats import StatsRegistry

log = logging.getLogger("ingestd.systemd")

STATUS_INTERVAL_S = 5.0


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings, or None when this process is not watched."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not is_ascii_digits(usec) or int(usec) == 0:
        return None
    watched_pid = environ.get("WATCHDOG_PID", "")
    if watched_pid and (not is_ascii_digits(watched_pid) or int(watched_pid) != pid):
        return None
    return int(usec) / 2 / 1e6


class Notifier:
    """sd_notify for this process; every method is a no-op outside systemd."""

    def __init__(self) -> None:
        self.watchdog_interval_s = watchdog_interval_s(os.environ, os.getpid())
        self._notifier: sdnotify.SystemdNotifier | None = None
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                # debug=True: failures are raised, so we can log them instead of losing them silently.
                self._notifier = sdnotify.SystemdNotifier(debug=True)
            except OSError as exc:
                log.warning("cannot reach systemd's notify socket", extra={"error": str(exc)})

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def send(self, *lines: str) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.notify("\n".join(lines))
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": str(exc)})

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def _one_line(text: str) -> str:
    # STATUS is one line; the package encodes latin-1, so keep to ASCII.
    return " ".join(text.split()).encode("ascii", "replace").decode("ascii")


class StatusLine:
    """`binance: 4/4 conns, 12.3k msg/s, lag p99 45 ms, 0 alerts`. Rates come from counter deltas."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._last_total: int | None = None
        self._last_at = 0.0

    def render(self, snapshot: dict, now: float, alerts: int = 0) -> str:
        """The line; a snapshot with "state" (from the supervisor) other than "running" says so first:
        `binance: paused by operator, 0/4 conns, ...`, `binance: draining, ...`."""
        conns = snapshot["connections"]
        up = sum(1 for c in conns if c["state"] == "up")
        planned = int(sum(v for k, v in snapshot["gauges"].items() if k.endswith(".connections_planned")))
        total = sum(c["messages"] for c in conns)
        rate = 0.0
        if self._last_total is not None and now > self._last_at:
            rate = max(0, total - self._last_total) / (now - self._last_at)
        self._last_total, self._last_at = total, now
        p99 = snapshot["lag"]["p99_us"]
        lag = "-" if p99 is None else f"{p99 / 1000:.0f} ms"
        state = snapshot.get("state")
        head = {"paused": "paused by operator, ", None: "", "running": ""}.get(state, f"{state}, ")
        return (f"{self.instance}: {head}{up}/{max(planned, len(conns))} conns, {_si(rate)} msg/s, lag p99 {lag},"
                f" {alerts} alerts")


def _si(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def feeds_fresh(stats: StatsRegistry, max_age_s: float) -> bool:
    """Every feed has shown progress within max_age_s (and at least one feed exists)."""
    ages = {k: v for k, v in stats.heartbeat_ages().items() if k.startswith("feed.")}
    return bool(ages) and all(age <= max_age_s for age in ages.values())


async def run_watchdog(notifier: Notifier, stats: StatsRegistry, paused: Callable[[], bool] = lambda: False) -> None:
    """Ping every WATCHDOG_USEC/2 while the feeds are fresh (or paused by the operator); hold back
    (and say so once) otherwise."""
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    holding = False
    while True:
        if paused() or feeds_fresh(stats, max_age_s=interval):
            notifier.watchdog()
            if holding:
                log.info("feeds are making progress again; watchdog pings resumed")
                holding = False
        elif not holding and any(k.startswith("feed.") for k in stats.heartbeat_ages()):
            # (Before a feed's first heartbeat, at start-up, nothing has stalled: hold back quietly.)
            log.error("a feed stopped making progress; withholding watchdog pings so systemd restarts us",
                      extra={"heartbeat_age_s": {k: round(v, 1) for k, v in stats.heartbeat_ages().items()}})
            holding = True
        await trio.sleep(interval)


async def run_status(notifier: Notifier, stats: StatsRegistry, instance: str, alerts_count=lambda: 0,
                     describe: Callable[[], dict] = dict, wake: trio.lowlevel.ParkingLot | None = None) -> None:
    """Refresh the one-line STATUS= every few seconds (shown by `systemctl status`), and at once
    when `wake` is unparked (a pause or resume). `describe()` adds the supervisor's "state"."""
    if not notifier.enabled:
        return
    line = StatusLine(instance)
    wake = wake or trio.lowlevel.ParkingLot()
    while True:
        snapshot = stats.snapshot()
        snapshot.update(describe())
        notifier.status(line.render(snapshot, trio.current_time(), alerts_count()))
        with trio.move_on_after(STATUS_INTERVAL_S):
            await wake.park()
