"""Live daemons with stats sockets, in one process: something real for `ingestd-console` to watch.

    python -m ingestd.statsock.demo --runtime-dir /tmp/ingestd-run --state-dir /tmp/ingestd-state
    ingestd-console --runtime-dir /tmp/ingestd-run

One loopback simulator, and the Binance feed split into N shards (instances binance-1 ... binance-N,
as `ingestd@binance-1` ... would be), each a real daemon (`run_daemon`: feed, pipeline, SQLite sink)
serving its StatsRegistry on <runtime-dir>/<instance>/stats.sock. The tests use `serve_demo` the same
way, and this module as a subprocess for the real-terminal check.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import trio

from ingestd.alerts import AlertConfig, AlertEngine, run_alerts
from ingestd.config import parse_config
from ingestd.sim.server import SimConfig, Simulator, serve
from ingestd.stats import StatsRegistry
from ingestd.statsock.server import serve_stats_socket
from ingestd.supervisor import run_daemon


@dataclass
class Demo:
    sim: Simulator
    stats: dict[str, StatsRegistry] = field(default_factory=dict)  # instance -> its registry
    sockets: dict[str, Path] = field(default_factory=dict)  # instance -> its stats socket
    stopping: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self.stopping.set()


def config_text(sim: Simulator, shards: int, state_dir: Path) -> str:
    quoted = ", ".join(f'"{s}"' for s in sim.symbols)
    return f"""
[daemon]
state_dir = "{state_dir}"
linger_ms = 50
shutdown_timeout_s = 2.0

[sinks.local]
type = "sqlite"
path = "ingestd.sqlite"

[feeds.binance]
sinks = ["local"]
ws_url = "{sim.ws_url}"
rest_url = "{sim.rest_url}"
symbols = [{quoted}]
fallback_pairs = []
book_interval_ms = 500
shards = {shards}
"""


async def serve_demo(
    runtime_dir: Path,
    state_dir: Path,
    *,
    shards: int = 2,
    symbols: int = 6,
    rate: float = 300.0,
    seed: int = 1,
    admin_group: str | None = "ingestd",
    registry: Callable[[str], StatsRegistry] = StatsRegistry,
    alerts: AlertConfig | None = None,
    alert_interval_s: float = 5.0,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled or `Demo.stop()`; reports the Demo once every stats socket is listening.

    alerts: also run the alert engine (ingestd.alerts.run_alerts) on each registry with this config,
    as the daemon will once it is wired into run_daemon; None: no alerts."""
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, SimConfig(symbols=symbols, rate=rate, seed=seed))
        demo = Demo(sim)
        instances = [f"binance-{i}" for i in range(1, shards + 1)] if shards > 1 else ["binance"]
        all_listening = trio.Event()

        pending = set(instances)

        async def one(instance: str) -> None:
            sdir = Path(state_dir) / instance
            config = parse_config(config_text(sim, shards, sdir), source="<statsock demo>", environ={})
            stats = demo.stats[instance] = registry(instance)
            path = demo.sockets[instance] = Path(runtime_dir) / instance / "stats.sock"

            async def on_started(stats: StatsRegistry) -> None:  # run_daemon cancels this at stop
                async with trio.open_nursery() as n:
                    if alerts is not None:
                        await n.start(partial(run_alerts, stats, AlertEngine(instance, alerts),
                                              interval_s=alert_interval_s))
                    await n.start(partial(serve_stats_socket, stats, path, admin_group=admin_group))
                    pending.discard(instance)
                    if not pending:
                        all_listening.set()

            await run_daemon(config, instance, sdir, stats=stats, on_started=on_started, stop=demo.stopping)

        async with trio.open_nursery() as daemons:
            for instance in instances:
                daemons.start_soon(one, instance)
            await all_listening.wait()
            task_status.started(demo)
        nursery.cancel_scope.cancel()  # daemons stopped: stop the simulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestd.statsock.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime-dir", type=Path, required=True, help="sockets go to DIR/<instance>/stats.sock")
    parser.add_argument("--state-dir", type=Path, required=True, help="the daemons' SQLite files go here")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--symbols", type=int, default=6)
    parser.add_argument("--rate", type=float, default=300.0, help="simulated events per second")
    parser.add_argument("--ready-file", type=Path, help="write the socket paths here, one a line, once listening")
    parser.add_argument("--no-alerts", action="store_true", help="do not run the alert engine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            demo = await nursery.start(lambda task_status: serve_demo(
                args.runtime_dir, args.state_dir, shards=args.shards, symbols=args.symbols, rate=args.rate,
                alerts=None if args.no_alerts else AlertConfig(), task_status=task_status))
            lines = "".join(f"{p}\n" for p in demo.sockets.values())
            print(f"stats sockets:\n{lines}watch them: ingestd-console --runtime-dir {args.runtime_dir}", flush=True)
            if args.ready_file:
                tmp = args.ready_file.with_suffix(".tmp")
                tmp.write_text(lines)
                tmp.rename(args.ready_file)

    try:
        trio.run(run)  # SIGTERM/SIGINT: the daemons drain and stop
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
