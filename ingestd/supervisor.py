"""Run one instance: sinks, then the feed, then wait for a signal and drain in order.

    run_daemon
    └── root nursery
        ├── sink runners       opened first, so nothing is produced before it can be stored
        ├── feed               resumes from the sinks' checkpoints
        └── signal watcher     SIGTERM/SIGINT: stop the feed, let the pipeline drain, bounded by
                               `daemon.shutdown_timeout_s`; a second signal cancels at once

Shutdown order matters for "nothing lost": the feed stops taking data first, then what it already
decoded flows into the sink channels, then the channels close and each runner writes its last
batch. Anything cut off by the deadline was never checkpointed, so the next start refetches it.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from ingestd.pipeline import Router, SinkRunner
from ingestd.sinks import build_sink
from ingestd.stats import StatsRegistry

log = logging.getLogger("ingestd.supervisor")


def make_feed(family: str, feed_cfg: Any, router: Router, stats: StatsRegistry, resume: dict[str, int]):
    if family == "binance":
        from ingestd.venues.binance.feed import BinanceFeed

        return BinanceFeed(feed_cfg, router, stats, resume=resume)
    raise ValueError(f"feed family {family!r} is not available in this version")


def run_instance(config: Any, instance: str, *, state_dir: Path) -> int:
    """Blocking entry point for `ingestd run INSTANCE`. Returns the process exit code."""
    try:
        trio.run(run_daemon, config, instance, state_dir)
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
) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain. `on_started` runs as a task once the
    feed is up (the demo's live summary uses it)."""
    family, feed_cfg = config.feed_for_instance(instance)
    stats = stats or StatsRegistry(instance)
    daemon = config.daemon
    state_dir.mkdir(parents=True, exist_ok=True)
    sinks = [build_sink(name, config.sinks[name], state_dir=state_dir, stats=stats) for name in feed_cfg.sinks]
    runners = [
        SinkRunner(
            sink,
            stats,
            batch_size=daemon.batch_size,
            linger_s=daemon.linger_ms / 1000,
            capacity=daemon.channel_capacity,
        )
        for sink in sinks
    ]
    router = Router(runners)
    stop = trio.Event() if stop is None else stop

    work_scope = trio.CancelScope()

    async def watch_signals() -> None:
        async for signum in signals:
            if not stop.is_set():
                log.info("stopping", extra={"signal": signal.Signals(signum).name})
                stop.set()
            else:
                log.warning("second signal: stopping now", extra={"signal": signal.Signals(signum).name})
                work_scope.cancel()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(watch_signals)
            with work_scope:
                async with trio.open_nursery() as work:
                    await _run_work(work, work_scope, family, feed_cfg, instance, sinks, runners, router, stats,
                                    stop, daemon.shutdown_timeout_s, on_started)
            outer.cancel_scope.cancel()  # the work is over: stop watching signals
    if work_scope.cancelled_caught:
        log.warning("shutdown cut short; unflushed records will be refetched on the next start")
    else:
        log.info("stopped cleanly", extra={"instance": instance})


async def _run_work(work, work_scope, family, feed_cfg, instance, sinks, runners, router, stats, stop,
                    shutdown_timeout_s, on_started) -> None:
    for runner in runners:
        await work.start(runner.run)
    # The first sink is the source of truth for where to resume.
    resume = await trio.to_thread.run_sync(sinks[0].resume_points, family)
    if resume:
        log.info("resuming from stored checkpoints", extra={"symbols": len(resume), "sink": sinks[0].name})
    feed = make_feed(family, feed_cfg, router, stats, resume)
    feed_done = trio.Event()

    async def run_feed(task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await feed.run(task_status=task_status)
        finally:
            feed_done.set()

    await work.start(run_feed)
    log.info("instance started", extra={"instance": instance, "sinks": ",".join(feed_cfg.sinks)})
    aux_scope = trio.CancelScope()

    async def run_aux() -> None:
        with aux_scope:
            await on_started(stats)

    if on_started is not None:
        work.start_soon(run_aux)

    async def drain_when_stopped() -> None:
        await stop.wait()
        aux_scope.cancel()
        # Everything still running must finish within the timeout, or be cancelled.
        work_scope.deadline = trio.current_time() + shutdown_timeout_s
        feed.stop()
        await feed_done.wait()
        await router.aclose()

    work.start_soon(drain_when_stopped)
