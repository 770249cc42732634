"""Run one instance: sinks, then the feed and the operator services, then drain in order.

    Instance.run
    ├── signal watcher      SIGTERM/SIGINT: stop (a second one: at once); SIGHUP: reload the symbol
    │                       list; SIGUSR2: wedge the feed on purpose (a watchdog drill)
    └── work                cancel scope that gets the shutdown deadline
        ├── sink runners    opened first, so nothing is produced before it can be stored or spooled
        ├── feed            resumes from the sinks' checkpoints
        ├── ops             stats socket, HTTP, alerts, systemd STATUS and watchdog (optional);
        │                   the socket's control verbs are ingestd.controls
        └── drain           on stop: STOPPING=1, the feed stops taking data and drains into the
                            sink channels, the channels close, each runner writes or spools its rest;
                            the stats socket and HTTP answer until the runners are done ("draining")

Shutdown order matters for "nothing lost": whatever the deadline cuts off was never checkpointed,
so the next start refetches it.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import logging
import signal
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from ingestd.config import ConfigError, load_config
from ingestd.controls import InstanceControls
from ingestd.pipeline import Router, SinkRunner
from ingestd.sinks import build_sink
from ingestd.sinks.spool import spool_dir_for
from ingestd.stats import StatsRegistry
from ingestd.systemd import Notifier

log = logging.getLogger("ingestd.supervisor")

READY_WAIT_S = 30.0  # READY=1 once every connection is up, or after this long regardless
RELOADABLE = {"symbols", "fallback_pairs"}  # feed keys SIGHUP applies; the rest need a restart


# family -> "module:Class". A feed class takes (feed_cfg, router, stats, resume=) and offers
# run(task_status), stop(), reconnect() -> int, wedge(), update_symbols(list) and `symbols`;
# see ingestd.venues.feed_api. Imported on demand, so one instance loads only its own family.
FEED_CLASSES: dict[str, str] = {
    "binance": "ingestd.venues.binance.feed:BinanceFeed",
    "polymarket": "ingestd.venues.polymarket.feed:PolymarketFeed",
    "uniswap": "ingestd.venues.uniswap.feed:UniswapFeed",
    "coingecko": "ingestd.venues.coingecko.feed:CoinGeckoFeed",
    "evm": "ingestd.venues.evm.feed:EvmFeed",
    "bybit": "ingestd.venues.bybit.feed:BybitFeed",
}


def make_feed(family: str, feed_cfg: Any, router: Router, stats: StatsRegistry, resume: dict[str, int]):
    try:
        target = FEED_CLASSES[family]
    except KeyError:
        raise ValueError(f"feed family {family!r} is not available in this version") from None
    module_name, _, class_name = target.partition(":")
    feed_class = getattr(importlib.import_module(module_name), class_name)
    return feed_class(feed_cfg, router, stats, resume=resume)


def run_instance(config: Any, instance: str, *, state_dir: Path) -> int:
    """Blocking entry point for `ingestd run INSTANCE`. Returns the process exit code."""
    try:
        trio.run(partial(run_daemon, config, instance, state_dir, ops=True))
    except KeyboardInterrupt:
        return 130
    return 0


async def run_daemon(
    config: Any,
    instance: str,
    state_dir: Path,
    *,
    stats: StatsRegistry | None = None,
    on_started: Callable[[StatsRegistry], Awaitable[None]] | None = None,
    stop: trio.Event | None = None,
    ops: bool = False,
) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain. `on_started` runs as a task once the
    feed is up (the demo's live summary uses it); `ops` adds the operator services."""
    await Instance(config, instance, state_dir, stats=stats).run(on_started=on_started, stop=stop, ops=ops)


def minimum_resume_points(points: list[dict[str, int]]) -> dict[str, int]:
    """Per symbol, the lowest checkpoint over the sinks that report one: a sink that was down (or
    lost its spool) must be refilled, and the others skip the repeats on their natural keys."""
    out: dict[str, int] = {}
    for p in points:
        for symbol, trade_id in p.items():
            out[symbol] = min(trade_id, out.get(symbol, trade_id))
    return out


class Instance:
    def __init__(self, config: Any, instance: str, state_dir: Path, *, stats: StatsRegistry | None = None) -> None:
        self.config = config
        self.instance = instance
        self.family, self.feed_cfg = config.feed_for_instance(instance)
        self.state_dir = state_dir
        self.stats = stats or StatsRegistry(instance)
        self.notifier = Notifier()
        self.feed: Any = None
        self.feed_started = False
        self._reload_lock = trio.Lock()  # SIGHUPs in a row apply one after another
        daemon = config.daemon
        self.sinks = [build_sink(n, config.sinks[n], state_dir=state_dir, stats=self.stats) for n in self.feed_cfg.sinks]
        self.runners = [
            SinkRunner(
                sink,
                self.stats,
                batch_size=daemon.batch_size,
                linger_s=daemon.linger_ms / 1000,
                capacity=daemon.channel_capacity,
                # <state_dir>/spool/<sink>/<instance>: the shards of a feed share the state dir and
                # the sink names, and a spool has exactly one owner (it is flock()ed).
                spool_dir=spool_dir_for(state_dir, sink.name, instance),
                spool_max_bytes=config.sinks[sink.name].spool_max_bytes,
                spool_when_full=config.sinks[sink.name].spool_when_full,
                max_stall_s=config.sinks[sink.name].max_stall_ms / 1000,
            )
            for sink in self.sinks
        ]
        self.router = Router(self.runners)
        self.controls = InstanceControls(self.family, instance, self.stats, self.runners, lambda: self.feed,
                                         FEED_CLASSES)

    async def run(self, *, on_started=None, stop: trio.Event | None = None, ops: bool = False) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stop = trio.Event() if stop is None else stop
        work = trio.CancelScope()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2) as signals:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._watch_signals, signals, stop, work, outer)
                with work:
                    async with trio.open_nursery() as nursery:
                        await self._start(nursery, stop, work, on_started, ops)
                outer.cancel_scope.cancel()  # the work is over: stop watching signals
        if work.cancelled_caught:
            log.warning("shutdown cut short; unflushed records will be refetched on the next start")
        else:
            log.info("stopped cleanly", extra={"instance": self.instance})

    async def _start(self, nursery: trio.Nursery, stop: trio.Event, work: trio.CancelScope, on_started, ops) -> None:
        runners_done = trio.Event()  # the operator services answer until then
        runners_left = len(self.runners)
        if not runners_left:
            runners_done.set()

        async def run_runner(runner: SinkRunner, task_status=trio.TASK_STATUS_IGNORED) -> None:
            nonlocal runners_left
            try:
                await runner.run(task_status=task_status)
            finally:
                runners_left -= 1
                if not runners_left:
                    runners_done.set()

        for runner in self.runners:
            await nursery.start(run_runner, runner)
        # Resume from the MINIMUM per symbol over the sinks, not from one of them: a sink that was
        # down must not be skipped over, or the trades it missed would never reach it (the others
        # skip the repeats on their natural keys). A sink returning {} (never checkpointed, or one
        # that cannot be read back) takes no part. A sink that is down right now answers from the
        # checkpoints in its spool (`SinkRunner.resume_points`), a lower bound of what it will hold.
        points = [await runner.resume_points(self.family) for runner in self.runners]
        resume = minimum_resume_points([p for p in points if p])
        if resume:
            log.info("resuming from stored checkpoints", extra={"symbols": len(resume)})
        self.feed = feed = make_feed(self.family, self.feed_cfg, self.router, self.stats, resume)
        feed_done = trio.Event()
        starting = trio.CancelScope()  # a stop while the feed is still starting ends its start-up
        aux = trio.CancelScope()  # tasks that end when draining starts
        services = trio.CancelScope()  # the operator services: they end when the runners are done
        draining = trio.Event()

        async def run_feed(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                await feed.run(task_status=task_status)
            finally:
                feed_done.set()

        async def run_services(task_status=trio.TASK_STATUS_IGNORED) -> None:
            from ingestd.ops import run_ops

            controls = self.controls
            with services:
                await run_ops(
                    config=self.config, feed_cfg=self.feed_cfg, instance=self.instance, stats=self.stats,
                    notifier=self.notifier, pairs=lambda: list(feed.symbols), controls=controls.handlers(),
                    describe=controls.describe, paused=controls.paused, status_wake=controls.changed,
                    draining=draining, task_status=task_status)

        async def run_aux() -> None:
            with aux:
                async with trio.open_nursery() as n:
                    n.start_soon(self._announce_ready)
                    if on_started is not None:
                        n.start_soon(on_started, self.stats)

        async def drain_when_stopped() -> None:
            await stop.wait()
            starting.cancel()
            self.controls.mark_draining()
            self.notifier.stopping()
            draining.set()
            aux.cancel()
            timeout = self.config.daemon.shutdown_timeout_s
            work.deadline = trio.current_time() + timeout
            # The runners give up on their sinks a little earlier and spool what they still hold
            # (quick appends), so the hard deadline does not cut them off with data in memory.
            for runner in self.runners:
                runner.set_shutdown_deadline(work.deadline - min(1.0, timeout / 4))
            feed.stop()
            await feed_done.wait()
            await self.router.aclose()
            await runners_done.wait()
            services.cancel()

        # Armed before the feed starts: a start-up that waits on the venue (rate limits, an
        # unreachable host) must still end promptly on SIGTERM, and drain what it has made.
        nursery.start_soon(drain_when_stopped)
        with starting:
            await nursery.start(run_feed)
        if starting.cancelled_caught:
            log.info("stopped while starting", extra={"instance": self.instance})
            return
        self.feed_started = True
        # Everything allocated so far (modules, clients, schemas) lives as long as the process: take
        # it out of the collector's reach, so full collections stop pausing every thread for 10-40 ms.
        gc.freeze()
        log.info("instance started", extra={"instance": self.instance, "sinks": ",".join(self.feed_cfg.sinks)})
        if ops:
            await nursery.start(run_services)
        nursery.start_soon(run_aux)

    async def _announce_ready(self) -> None:
        """READY=1 once every planned connection is up (sinks are open or spooling by now), or after
        READY_WAIT_S regardless, so an unreachable venue shows in STATUS rather than as a failed start."""
        with trio.move_on_after(READY_WAIT_S):
            while True:
                planned = self.stats.gauges.get(f"{self.family}.connections_planned", 0)
                up = sum(1 for c in self.stats.connections.values() if c.state == "up")
                if up >= planned:
                    break
                await trio.sleep(0.1)
        self.controls.mark_ready()
        self.notifier.ready(f"{self.instance}: running")
        log.info("ready", extra={"instance": self.instance})

    async def _watch_signals(self, signals, stop: trio.Event, work: trio.CancelScope, nursery: trio.Nursery) -> None:
        # Never awaits anything slow itself: a reload runs as its own task, so a SIGTERM right
        # behind a SIGHUP is acted on at once.
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                nursery.start_soon(self._reload_unless_stopping, stop)
            elif signum == signal.SIGUSR2:
                log.warning("SIGUSR2: wedging the feed on purpose (watchdog drill)")
                if self.feed is not None:
                    self.feed.wedge()
            elif not stop.is_set():
                log.info("stopping", extra={"signal": name})
                stop.set()
            else:
                log.warning("second signal: stopping now", extra={"signal": name})
                work.cancel()

    async def _reload_unless_stopping(self, stop: trio.Event) -> None:
        async with self._reload_lock:
            if stop.is_set():
                log.warning("reload ignored: the instance is stopping")
            elif not self.feed_started:
                log.warning("reload ignored: the feed is still starting; send SIGHUP again once ready")
            else:
                await self.reload()

    async def reload(self) -> None:
        """Re-read the config file and apply the feed's symbol list; other changes need a restart."""
        self.notifier.reloading()
        try:
            try:
                config = await trio.to_thread.run_sync(load_config, self.config.source)
                _, new = config.feed_for_instance(self.instance)
            except ConfigError as exc:
                log.error("reload refused, keeping the running configuration",
                          extra={"problems": "; ".join(exc.problems)})
                return
            old, fresh = dataclasses.asdict(self.feed_cfg), dataclasses.asdict(new)
            reloadable = RELOADABLE & fresh.keys()  # families without a symbol list reload nothing live
            pending = sorted(k for k, v in fresh.items() if k not in reloadable and old.get(k) != v)
            if pending:
                log.warning("changed keys need a restart to apply", extra={"keys": ",".join(pending)})
            if self.feed is not None and reloadable:
                self.feed.cfg = self.feed_cfg = dataclasses.replace(
                    self.feed_cfg, **{k: fresh[k] for k in reloadable})
                if "symbols" in reloadable:
                    await self.feed.update_symbols(list(new.symbols))
        except Exception:
            # A reload is an operator's request; whatever goes wrong, the running feed carries on.
            log.exception("reload failed, keeping the running configuration")
        finally:
            if not self.controls.draining:  # a reload cut short by SIGTERM must not undo STOPPING=1
                self.notifier.ready(f"{self.instance}: {self.controls.state}")
            self.controls.changed.unpark_all()  # and the full STATUS= line right after
