"""The operator's control verbs for one instance, and the run state they change.

    ingestd pause binance      ->  stats socket {"type":"control","verb":"pause"}  ->  InstanceControls.pause

The stats socket (ingestd.statsock.server) lets only root or the admin group get here (SO_PEERCRED);
these handlers decide what each verb means:

    pause      the feed closes its connections (stops polling) and idles, keeping its state; the
               connections show "paused", STATUS= and the console say "paused", and the gauge
               <family>.paused is 1. Idempotent.
    resume     the feed reconnects and catches up exactly as after any gap (Binance: REST backfill
               of the trades made meanwhile and fresh book snapshots). Idempotent.
    reconnect  replace every connection (make-before-break where the venue allows it).
    trigger    polling feeds: one poll now, out of schedule. Others answer which families poll.
    flush      every sink runner writes what it holds now instead of waiting out linger_ms, and
               the reply says how many records each held and whether they are stored (or spooled).

The run state, shown on the stats socket as "state": starting (until READY=1) -> running <->
paused -> draining (after SIGTERM, while the sinks drain).
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any, Callable, Mapping, Sequence

import trio

from ingestd.alerts import iso_time
from ingestd.pipeline import SinkRunner
from ingestd.stats import StatsRegistry
from ingestd.statsock.server import ControlRefused

log = logging.getLogger("ingestd.controls")

FLUSH_TIMEOUT_S = 10.0  # `flush` waits this long for the sinks at most (args: {"timeout_s": ...})

STARTING, RUNNING, PAUSED, DRAINING = "starting", "running", "paused", "draining"


def polling_families(feed_classes: Mapping[str, str]) -> list[str]:
    """The families whose feed class answers `trigger` (imported to ask; one that fails to import is
    left out)."""
    out = []
    for family, target in feed_classes.items():
        module_name, _, class_name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except Exception:  # a family broken in this build must not break the answer for this one
            continue
        if callable(getattr(cls, "trigger", None)):
            out.append(family)
    return out


class InstanceControls:
    """Handlers for the stats socket's control verbs, and the run state they and the supervisor set."""

    def __init__(self, family: str, instance: str, stats: StatsRegistry, runners: Sequence[SinkRunner],
                 feed: Callable[[], Any], feed_classes: Mapping[str, str]) -> None:
        self.family = family
        self.instance = instance
        self.stats = stats
        self.runners = list(runners)
        self._feed = feed  # the feed exists only once the sinks have given their resume points
        self._feed_classes = feed_classes
        self._polling: list[str] | None = None  # polling_families(), asked once (it imports every feed)
        self.ready = False  # READY=1 was sent
        self.draining = False  # SIGTERM: the feed stops, the sinks drain
        self.paused_since: float | None = None  # Unix time of the operator's pause
        # Unparked on every state change, so STATUS= says it at once instead of within 5 s.
        self.changed = trio.lowlevel.ParkingLot()

    # --- state ---

    @property
    def state(self) -> str:
        if self.draining:
            return DRAINING
        if self.paused_since is not None:
            return PAUSED
        return RUNNING if self.ready else STARTING

    def mark_ready(self) -> None:
        self.ready = True
        self.changed.unpark_all()

    def mark_draining(self) -> None:
        self.draining = True
        self.changed.unpark_all()

    def paused(self) -> bool:
        return self.paused_since is not None

    def describe(self) -> dict[str, Any]:
        """Top-level snapshot fields for the stats socket, STATUS= and the alert rules."""
        out: dict[str, Any] = {"state": self.state}
        if self.paused_since is not None:
            out["paused_since"] = iso_time(self.paused_since)
        return out

    def handlers(self) -> dict[str, Callable[[dict], Any]]:
        return {"pause": self.pause, "resume": self.resume, "reconnect": self.reconnect, "trigger": self.trigger,
                "flush": self.flush}

    def _running_feed(self, verb: str) -> Any:
        feed = self._feed()
        if self.state == DRAINING:
            raise ControlRefused(f"{self.instance} is shutting down (draining); {verb} does not apply")
        if feed is None:
            raise ControlRefused(f"{self.instance} is still starting; try again in a moment")
        return feed

    # --- verbs ---

    async def pause(self, args: dict) -> dict:
        feed = self._running_feed("pause")
        if self.paused_since is not None:
            return {"state": PAUSED, "since": iso_time(self.paused_since), "already": True}
        self.paused_since = time.time()
        feed.pause()
        self.stats.set_gauge(f"{self.family}.paused", 1)
        self.changed.unpark_all()
        log.warning("paused by operator: connections closed, nothing is ingested until resume",
                    extra={"instance": self.instance, "resume_with": f"ingestd resume {self.instance}"})
        return {"state": PAUSED, "since": iso_time(self.paused_since), "already": False}

    async def resume(self, args: dict) -> dict:
        feed = self._running_feed("resume")
        if self.paused_since is None:
            return {"state": self.state, "already": True}
        paused_for = time.time() - self.paused_since
        feed.resume()
        self.paused_since = None
        self.stats.set_gauge(f"{self.family}.paused", 0)
        self.changed.unpark_all()
        log.warning("resumed by operator: reconnecting and catching up",
                    extra={"instance": self.instance, "paused_for_s": round(paused_for, 1)})
        return {"state": self.state, "paused_for_s": round(paused_for, 3), "already": False}

    async def reconnect(self, args: dict) -> dict:
        feed = self._running_feed("reconnect")
        if self.paused_since is not None:
            raise ControlRefused(f"{self.instance} is paused; `resume` reconnects it")
        return {"replacing": feed.reconnect()}

    async def trigger(self, args: dict) -> dict:
        feed = self._running_feed("trigger")
        poll = getattr(feed, "trigger", None)
        if not callable(poll):
            if self._polling is None:  # in a thread: importing the other families takes a second or two
                self._polling = await trio.to_thread.run_sync(polling_families, self._feed_classes)
            polling = self._polling
            where = f"trigger applies to {', '.join(polling)}" if polling else "no feed in this build polls"
            raise ControlRefused(f"{self.family} does not poll; {where}")
        if self.paused_since is not None:
            raise ControlRefused(f"{self.instance} is paused; `resume` it first")
        return dict(await poll())

    async def flush(self, args: dict) -> dict:
        timeout_s = args.get("timeout_s", FLUSH_TIMEOUT_S)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 25:
            raise ControlRefused("flush: timeout_s must be a number of seconds in (0, 25]")
        sinks: dict[str, dict] = {}

        async def one(runner: SinkRunner) -> None:
            sinks[runner.sink.name] = await runner.flush(float(timeout_s))

        async with trio.open_nursery() as nursery:
            for runner in self.runners:
                nursery.start_soon(one, runner)
        return {"records": sum(s["records"] for s in sinks.values()), "sinks": dict(sorted(sinks.items()))}
