"""The operator-facing services of one instance, started next to the feed by the supervisor:
the stats socket (ingestd-console), HTTP /health /stats /pairs /metrics, the alert engine, and
systemd's STATUS line and watchdog.

The stats socket and HTTP answer until the very end, through the drain after SIGTERM (the console
shows "draining"); alerts, STATUS= and the watchdog stop when the drain starts (`draining` is set).

None of these may take ingestion down. If the socket or the port cannot be bound (a second
instance on the same port, a missing runtime directory), the error is logged and the daemon goes on
storing data without that service.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable

import trio

from ingestd.alerts import AlertEngine, config_from_mapping, run_alerts
from ingestd.http_api import serve_http
from ingestd.secrets import reveal
from ingestd.statsock.paths import stats_socket_path
from ingestd.statsock.server import serve_stats_socket
from ingestd.stats import StatsRegistry
from ingestd.systemd import Notifier, run_status, run_watchdog

log = logging.getLogger("ingestd.ops")


def http_port(config: Any, feed_cfg: Any) -> int:
    """The family's http_port, else daemon.http_port; shard i adds i - 1 so shards on one host do not
    collide. 0 turns HTTP off."""
    base = config.daemon.http_port if feed_cfg.http_port is None else feed_cfg.http_port
    if base == 0:
        return 0
    return base + (feed_cfg.shard[0] - 1 if feed_cfg.shard else 0)


async def run_ops(
    *,
    config: Any,
    feed_cfg: Any,
    instance: str,
    stats: StatsRegistry,
    notifier: Notifier,
    pairs,
    controls: dict,
    describe: Callable[[], dict] = dict,
    paused: Callable[[], bool] = lambda: False,
    status_wake: trio.lowlevel.ParkingLot | None = None,
    draining: trio.Event | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Start every service, report started, run until cancelled. `describe()` adds the supervisor's
    run state to the socket's snapshots, STATUS= and the alert rules; `paused()` tells the watchdog
    that a quiet feed is idle on purpose."""
    engine = AlertEngine(instance, config_from_mapping(config.alerts.rule_settings()))
    draining = trio.Event() if draining is None else draining
    async with trio.open_nursery() as nursery:
        await _start_or_log(nursery, "stats socket", partial(
            serve_stats_socket, stats, stats_socket_path(config, instance), controls=controls, describe=describe))
        port = http_port(config, feed_cfg)
        if port:
            await _start_or_log(nursery, "HTTP server", partial(
                serve_http, stats, host=reveal(config.daemon.http_host), port=port, pairs=pairs, alerts=engine,
                sink_fail_s=config.daemon.health_sink_fail_s))
        await nursery.start(partial(_until_draining, draining, config=config, instance=instance, stats=stats,
                                    notifier=notifier, engine=engine, describe=describe, paused=paused,
                                    status_wake=status_wake))
        task_status.started()


async def _until_draining(draining: trio.Event, *, config, instance, stats, notifier, engine, describe, paused,
                          status_wake, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Alerts, STATUS= and the watchdog: a drain is no outage to alert about, and systemd takes a
    stopping unit's timing from TimeoutStopSec=, not from the watchdog."""
    async with trio.open_nursery() as nursery:
        alerts = config.alerts
        if alerts.enabled:
            webhook = reveal(alerts.webhook_url) if alerts.webhook_url else None
            await nursery.start(partial(
                run_alerts, stats, engine, interval_s=alerts.interval_s, webhook_url=webhook,
                min_severity=alerts.min_severity, webhook_timeout_s=alerts.webhook_timeout_s,
                webhook_attempts=alerts.webhook_attempts, describe=describe))
        nursery.start_soon(partial(run_status, notifier, stats, instance, lambda: len(engine.active()),
                                   describe=describe, wake=status_wake))
        nursery.start_soon(run_watchdog, notifier, stats, paused)
        task_status.started()
        await draining.wait()
        nursery.cancel_scope.cancel()


async def _start_or_log(nursery: trio.Nursery, what: str, fn) -> None:
    try:
        where = await nursery.start(fn)
    except OSError as exc:
        log.error(f"{what} not started; ingestion continues without it", extra={"error": str(exc)})
    else:
        if what == "HTTP server":  # the stats socket logs its own path
            log.info("HTTP server listening", extra={"port": where})
