"""SinkRunner.flush, the operator's `flush` verb: what a runner holds is written now, not after linger.

Time is trio's MockClock, as in test_pipeline.py, whose sinks and helpers these tests share.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import wait_all_tasks_blocked

from ingestd.pipeline import Router, SinkRunner
from ingestd.stats import StatsRegistry
from tests.unit.test_pipeline import FlakySqlite, MemorySink, Stream, nothing_written, spooled_runner, trades

pytestmark = pytest.mark.trio


async def test_flush_writes_the_lingering_batch_at_once_and_counts_it(mock_clock: trio.testing.MockClock) -> None:
    sink = MemorySink()
    runner = SinkRunner(sink, StatsRegistry("test"), batch_size=1000, linger_s=60.0)
    async with trio.open_nursery() as nursery, Router([runner]) as router:
        await nursery.start(runner.run)
        start = trio.current_time()
        await router.send(trades(0, 3))
        await router.send(trades(3, 4))
        await wait_all_tasks_blocked()
        assert nothing_written(sink) and runner.held_records() == 7
        assert await runner.flush(timeout_s=5) == {"records": 7, "done": True, "state": "live"}
        assert trio.current_time() == start  # no linger waited out
        assert [r.trade_id for r in sink.records()] == list(range(7))
        assert await sink.written.receive() == 7
        assert runner.held_records() == 0
        # Nothing held: nothing to do, and done.
        assert await runner.flush(timeout_s=5) == {"records": 0, "done": True, "state": "live"}
        # Afterwards the runner lingers again as configured.
        await router.send(trades(7, 1))
        await wait_all_tasks_blocked()
        mock_clock.jump(59)
        await wait_all_tasks_blocked()
        assert nothing_written(sink)
        mock_clock.jump(2)
        assert await sink.written.receive() == 1


async def test_flush_covers_the_queue_behind_the_batch_too(mock_clock: trio.testing.MockClock) -> None:
    sink = MemorySink()
    runner = SinkRunner(sink, StatsRegistry("test"), batch_size=5, linger_s=60.0, capacity=10)
    async with trio.open_nursery() as nursery, Router([runner]) as router:
        await nursery.start(runner.run)
        gate_closed = threading.Event()
        sink.gate = gate_closed  # the first write blocks: everything sent meanwhile queues up
        await router.send(trades(0, 5))  # a full batch: written at once (and held at the gate)
        await wait_all_tasks_blocked()
        for i in range(5, 17, 3):
            await router.send(trades(i, 3))  # queued behind it, 12 records, none a full batch alone
        await wait_all_tasks_blocked()
        assert runner.held_records() == 17
        async with trio.open_nursery() as flushing:
            result = {}

            async def flush() -> None:
                result.update(await runner.flush(timeout_s=30))

            flushing.start_soon(flush)
            await wait_all_tasks_blocked()
            assert not result  # still waiting for the write in flight
            gate_closed.set()
        assert result == {"records": 17, "done": True, "state": "live"}
        assert [r.trade_id for r in sink.records()] == list(range(17))


async def test_flush_gives_up_after_its_timeout_when_the_sink_is_stuck(mock_clock: trio.testing.MockClock) -> None:
    sink = MemorySink(fail_first=10**9)  # no spool: the runner retries the same batch forever
    runner = SinkRunner(sink, StatsRegistry("test"), batch_size=100, linger_s=60.0, retry_cap_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        router = Router([runner])
        await router.send(trades(0, 4))
        start = trio.current_time()
        result: dict = {}

        async def flush() -> None:
            result.update(await runner.flush(timeout_s=3))

        nursery.start_soon(flush)
        # The write is tried at once, not after the linger: no trio time passes before it.
        await until_real(lambda: sink.calls, "the first write attempt")
        assert trio.current_time() == start and not result
        mock_clock.jump(3.01)
        await until_real(lambda: result, "the flush to give up")
        assert result == {"records": 4, "done": False, "state": "live"}
        nursery.cancel_scope.cancel()


async def until_real(predicate, what: str, timeout_s: float = 30.0) -> None:
    """Wait in real time, trio's mock clock standing still (the sink works in a thread)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} never happened"
        await trio.to_thread.run_sync(time.sleep, 0.005)


async def test_flush_of_a_diverted_runner_spools_what_it_holds(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    sink.down = True
    runner = spooled_runner(sink, stats, tmp_path / "spool", linger_s=30.0, batch_size=1000)
    stream = Stream()
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert runner.state == "spooling"
        router = Router([runner])
        await router.send(stream.chunk(6))
        held = runner.held_records()
        assert held > 0 and stats.counters["spool.pg.spooled_records"] == 0
        start = trio.current_time()
        assert await runner.flush(timeout_s=5) == {"records": held, "done": True, "state": "spooling"}
        assert trio.current_time() == start  # the spooler did not linger its 30 s
        assert stats.counters["spool.pg.spooled_records"] == held
        nursery.cancel_scope.cancel()
