"""The operator-facing services of one instance, started next to the feed by the supervisor:
the stats socket (ingestd-console), HTTP /health /stats /pairs /metrics, the alert engine, and
systemd's STATUS line and watchdog.

None of these may take ingestion down. If the socket or the port cannot be bound (a second
instance on the same port, a missing runtime directory), the error is logged and the daemon goes on
storing data without that service.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ingestd.alerts import AlertEngine, config_from_mapping, run_alerts
from ingestd.http_api import serve_http
from ingestd.secrets import reveal
from ingestd.statsock.server import serve_stats_socket
from ingestd.stats import StatsRegistry
from ingestd.systemd import Notifier, run_status, run_watchdog

log = logging.getLogger("ingestd.ops")


def stats_socket_path(config: Any, instance: str) -> Path:
    """daemon.stats_socket, else $RUNTIME_DIRECTORY/stats.sock (systemd's RuntimeDirectory=ingestd/%i),
    else <daemon.runtime_dir>/<instance>/stats.sock; the console looks in /run/ingestd/*/."""
    explicit = reveal(config.daemon.stats_socket)
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "stats.sock"
    return Path(reveal(config.daemon.runtime_dir)) / instance / "stats.sock"


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
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Start every service, report started, run until cancelled."""
    engine = AlertEngine(instance, config_from_mapping(config.alerts.rule_settings()))
    async with trio.open_nursery() as nursery:
        await _start_or_log(nursery, "stats socket", partial(
            serve_stats_socket, stats, stats_socket_path(config, instance), controls=controls))
        port = http_port(config, feed_cfg)
        if port:
            await _start_or_log(nursery, "HTTP server", partial(
                serve_http, stats, host=reveal(config.daemon.http_host), port=port, pairs=pairs, alerts=engine,
                sink_fail_s=config.daemon.health_sink_fail_s))
        alerts = config.alerts
        if alerts.enabled:
            webhook = reveal(alerts.webhook_url) if alerts.webhook_url else None
            await nursery.start(partial(
                run_alerts, stats, engine, interval_s=alerts.interval_s, webhook_url=webhook,
                min_severity=alerts.min_severity, webhook_timeout_s=alerts.webhook_timeout_s,
                webhook_attempts=alerts.webhook_attempts))
        nursery.start_soon(run_status, notifier, stats, instance, lambda: len(engine.active()))
        nursery.start_soon(run_watchdog, notifier, stats)
        task_status.started()


async def _start_or_log(nursery: trio.Nursery, what: str, fn) -> None:
    try:
        where = await nursery.start(fn)
    except OSError as exc:
        log.error(f"{what} not started; ingestion continues without it", extra={"error": str(exc)})
    else:
        if what == "HTTP server":  # the stats socket logs its own path
            log.info("HTTP server listening", extra={"port": where})
