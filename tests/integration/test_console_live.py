"""ingestd-console against live daemons: two real in-process daemons (run_daemon: feed, pipeline, SQLite
sink) on the loopback simulator, each serving its StatsRegistry with serve_stats_socket.

The daemons run in Trio *guest mode* inside the asyncio loop that runs the Textual app, so one
process and one thread hold everything and nothing is mocked: the console finds the sockets, connects
and subscribes over AF_UNIX exactly as it does against `ingestd@binance-N`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import outcome
import trio

from ingestd.alerts import RULE_NAMES, AlertConfig
from ingestd.stats import StatsRegistry
from ingestd.statsock.demo import serve_demo
from ingestd.statsock.server import serve_stats_socket
from ingestd_console.app import ConsoleApp, InstanceScreen
from ingestd_console.model import GONE, UP


# The real alert engine (ingestd.alerts) runs beside each daemon, as run_daemon will run it: only the
# rule under test, with windows short enough for a test.
ALERTS = AlertConfig(write_errors_window_s=1.0, clear_for_s=0.3,
                     disabled=frozenset(RULE_NAMES) - {"SinkWriteErrors"})


@contextlib.asynccontextmanager
async def trio_guest(main, *args):
    """Run `main(*args, task_status=...)` under Trio, hosted by the running asyncio loop; yield what it
    passes to task_status.started and the run's TrioToken; on exit cancel it and wait for the end."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future = loop.create_future()
    done: asyncio.Future = loop.create_future()
    cancel = trio.CancelScope()

    async def trio_main():
        token = trio.lowlevel.current_trio_token()

        class Status:
            def started(self, value=None):
                started.set_result((value, token))

        with cancel:
            await main(*args, task_status=Status())

    trio.lowlevel.start_guest_run(
        trio_main,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        done_callback=lambda result: done.set_result(result) if not done.done() else None,
        host_uses_signal_set_wakeup_fd=False,
    )
    first = await asyncio.wait({started, done}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if done.done():
        done.result().unwrap()  # failed before starting: raise its error
    assert started in first[0], "the Trio side did not start in 30 s"
    value, token = started.result()
    try:
        yield value, token
    finally:
        token.run_sync_soon(cancel.cancel)
        result = await asyncio.wait_for(done, 30)
        if isinstance(result, outcome.Error):
            result.unwrap()


async def until(pilot, predicate, timeout=20.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            states = {i.name: (i.state, i.reason, len(i.rates)) for i in pilot.app.instances.values()}
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; instances: {states}")
        await asyncio.sleep(0.05)


async def press(pilot, key: str) -> None:
    """A key through the app's real key handling (bindings, focus). Not pilot.press: that waits for the
    process to go idle, which it never does with two daemons and a simulator in it."""
    pilot.app.simulate_key(key)
    await asyncio.sleep(0.05)


def row_text(app: ConsoleApp, key: str) -> list[str]:
    table = app.query_one("#instances")
    return [str(cell) for cell in table.get_row(key)]


def test_two_live_instances_rates_alerts_and_navigation(tmp_path):
    asyncio.run(_two_live_instances(tmp_path))


async def _two_live_instances(tmp_path: Path):
    run = tmp_path / "run"
    async with trio_guest(lambda task_status: serve_demo(
            run, tmp_path / "state", shards=2, symbols=6, rate=100.0, alerts=ALERTS, alert_interval_s=0.2,
            task_status=task_status)) as (demo, token):
        app = ConsoleApp(runtime_dir=run, interval_ms=200, reconnect_s=0.5, rescan_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            keys = [str(demo.sockets[name]) for name in ("binance-1", "binance-2")]
            await until(pilot, lambda: all(k in app.instances for k in keys), what="both sockets found")
            await until(pilot, lambda: all(len(app.instances[k].rates) >= 3 for k in keys), what="rates")
            for key, name in zip(keys, ("binance-1", "binance-2")):
                inst = app.instances[key]
                assert inst.state == UP and inst.name == name
                cells = row_text(app, key)
                assert cells[0] == name and cells[1] == "up" and cells[2] == "1/1"
                assert inst.rate and inst.rate > 0

            # The rates move: the msg/s shown changes and the rows written grow.
            before = {k: (list(app.instances[k].rates), row_text(app, k)[6]) for k in keys}
            await until(pilot, lambda: all(len(app.instances[k].rates) >= len(before[k][0]) + 3 for k in keys),
                        what="more samples")
            for k in keys:
                rates = list(app.instances[k].rates)
                assert len(set(rates)) > 1, rates
                counters = app.instances[k].snapshot["counters"]
                assert counters["sink.local.rows_written"] > 0
            assert "msg/s binance-1: now" in str(app.query_one("#trend-label").render())

            # A sink write fails on binance-2: the alert engine fires SinkWriteErrors, the console shows it.
            assert "No alerts firing" in str(app.query_one("#alerts").render())
            registry = demo.stats["binance-2"]
            registry.incr("sink.local.write_errors")
            await until(pilot, lambda: app.instances[keys[1]].firing(), what="the alert")
            assert row_text(app, keys[1])[9] == "1" and row_text(app, keys[1])[7] == "1"  # ALRT, WERR
            assert row_text(app, keys[0])[9] == "-"
            panel = str(app.query_one("#alerts").render())
            assert "ALERT" in panel and "binance-2 SinkWriteErrors sink=local [error]" in panel

            # Enter opens the instance under the cursor, Esc comes back.
            await press(pilot, "down")
            await until(pilot, lambda: app.query_one("#instances").cursor_row == 1, what="cursor on binance-2")
            await press(pilot, "enter")
            await until(pilot, lambda: isinstance(app.screen, InstanceScreen), what="instance screen")
            screen = app.screen
            assert screen.key == keys[1]
            conns = screen.query_one("#conns-table")
            await until(pilot, lambda: conns.row_count == 1, what="connections listed")
            assert str(conns.get_row_at(0)[1]) == "up"
            assert screen.query_one("#symbols-table").row_count == 3  # this shard's half of 6 symbols
            assert str(screen.query_one("#sinks-table").get_row_at(0)[0]) == "local"
            await press(pilot, "4")
            await until(pilot, lambda: screen.query_one("TabbedContent").active == "alerts", what="alerts tab")
            alerts = screen.query_one("#alerts-table")

            def rows():
                return [tuple(str(c) for c in alerts.get_row_at(i)[:3]) for i in range(alerts.row_count)]

            # (It may already have resolved on a busy machine: the history keeps the firing entry.)
            assert ("firing", "SinkWriteErrors sink=local", "error") in rows()
            # No more errors: after its window the alert resolves, and the history keeps both states.
            await until(pilot, lambda: alerts.row_count == 2, what="alert history")
            assert [str(alerts.get_row_at(i)[0]) for i in range(2)] == ["resolved", "firing"]
            detail = str(screen.query_one("#alert-detail").render())
            assert detail.startswith("SinkWriteErrors sink=local: no failed write to sink local"), detail
            await press(pilot, "escape")
            await until(pilot, lambda: not isinstance(app.screen, InstanceScreen), what="back")
            await until(pilot, lambda: row_text(app, keys[1])[9] == "-", what="alert cleared")
            await press(pilot, "q")
            await until(pilot, lambda: app.return_code is not None, what="q to quit")
        assert app.return_code == 0


def test_instances_restarting_and_appearing(tmp_path):
    asyncio.run(_restarts(tmp_path))


async def _restarts(tmp_path: Path):
    """Plain registries, no feed: restarts are about the socket. A daemon stops (gone), comes back
    (up again, its counters from zero), and a new instance's socket is picked up on rescan."""
    run = tmp_path / "run"
    a, b = StatsRegistry("alpha"), StatsRegistry("beta")
    a_sock, b_sock = run / "alpha" / "stats.sock", run / "beta" / "stats.sock"

    @dataclass
    class Servers:
        scopes: dict = field(default_factory=dict)
        nursery: trio.Nursery | None = None

    servers = Servers()

    async def host(task_status):
        async with trio.open_nursery() as nursery:
            servers.nursery = nursery
            task_status.started(None)
            await trio.sleep_forever()

    async def serve(registry, path):  # runs in Trio
        with trio.CancelScope() as scope:
            servers.scopes[registry.instance] = scope
            await serve_stats_socket(registry, path)

    async with trio_guest(host) as (_, token):
        token.run_sync_soon(lambda: servers.nursery.start_soon(serve, a, a_sock))
        app = ConsoleApp(runtime_dir=run, interval_ms=100, reconnect_s=0.2, rescan_s=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: str(a_sock) in app.instances and app.instances[str(a_sock)].state == UP,
                        what="alpha up")
            assert str(b_sock) not in app.instances
            token.run_sync_soon(lambda: servers.nursery.start_soon(serve, b, b_sock))
            await until(pilot, lambda: str(b_sock) in app.instances and app.instances[str(b_sock)].state == UP,
                        what="beta found by rescan")
            token.run_sync_soon(lambda: servers.scopes["alpha"].cancel())  # alpha stops
            await until(pilot, lambda: app.instances[str(a_sock)].state == GONE, what="alpha gone")
            assert row_text(app, str(a_sock))[1] == "gone"
            assert app.instances[str(b_sock)].state == UP
            a2 = StatsRegistry("alpha")  # restarted: a new registry
            token.run_sync_soon(lambda: servers.nursery.start_soon(serve, a2, a_sock))
            await until(pilot, lambda: app.instances[str(a_sock)].state == UP, what="alpha back")
            assert app.instances[str(a_sock)].snapshot["started_us"] == a2.started_us
            assert "2 sockets (2 up)" in app.sub_title
            await press(pilot, "q")
            await until(pilot, lambda: app.return_code is not None, what="q to quit")
