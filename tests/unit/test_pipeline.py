"""SinkRunner and Router: batching on size and linger, drain on close, backpressure, retries.

Time is trio's MockClock (pytest-trio's `mock_clock` / `autojump_clock` fixtures) and "nothing happened
yet" is `wait_all_tasks_blocked`: no test sleeps and hopes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import wait_all_tasks_blocked

from ingestd.model import BookTop, Checkpoint, Record, Trade
from ingestd.pipeline import Router, SinkRunner
from ingestd.sinks.base import Sink, SinkError
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry, now_us


def trades(first: int, n: int, *, ts_us: int = 1_700_000_000_000_000) -> list[Trade]:
    return [Trade("binance", "BTCUSDT", i, 100.0, 1.0, "buy", ts_us, ts_us) for i in range(first, first + n)]


class MemorySink(Sink):
    """Stores records by natural key (idempotent like a real sink) and tells the test about each write.

    `fail_first` writes raise SinkError; a `gate` makes write block (in its worker thread) until set.
    """

    def __init__(self, name: str = "mem", *, fail_first: int = 0, gate: threading.Event | None = None) -> None:
        self.name = name
        self.fail_first = fail_first
        self.gate = gate
        self.calls: list[list[Record]] = []  # every write call, failed ones included
        self.batches: list[list[Record]] = []  # successful writes
        self.stored: dict[tuple, Record] = {}
        self.opened = self.closed = False
        self._notify_send, self.written = trio.open_memory_channel[int](1000)

    def open(self) -> None:
        self.opened = True

    def write(self, batch: Sequence[Record]) -> None:
        if self.gate is not None and not self.gate.wait(timeout=10):
            raise RuntimeError("test gate never opened")
        self.calls.append(list(batch))
        if len(self.calls) <= self.fail_first:
            raise SinkError("store unavailable")
        for r in batch:
            key = (r.KIND, r.venue, r.symbol, getattr(r, "trade_id", None) or getattr(r, "update_id", None))
            self.stored.setdefault(key, r)
        self.batches.append(list(batch))
        trio.from_thread.run_sync(self._notify_send.send_nowait, len(batch))

    def close(self) -> None:
        self.closed = True

    def records(self) -> list[Record]:
        return [r for batch in self.batches for r in batch]


def nothing_written(sink: MemorySink) -> bool:
    try:
        sink.written.receive_nowait()
    except trio.WouldBlock:
        return True
    return False


@pytest.mark.trio
async def test_runs_in_order_open_started_close() -> None:
    sink, stats = MemorySink(), StatsRegistry("test")
    runner = SinkRunner(sink, stats)
    router = Router([runner])
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert sink.opened and not sink.closed
        assert "sink.mem" in stats.heartbeat_ages()
        assert stats.queue_depths() == {"sink.mem": {"used": 0, "capacity": 256}}
        await router.aclose()
    assert sink.closed and sink.batches == []


@pytest.mark.trio
async def test_flushes_when_the_batch_is_full(mock_clock: trio.testing.MockClock) -> None:
    sink = MemorySink()
    runner = SinkRunner(sink, StatsRegistry("test"), batch_size=10, linger_s=1.0)
    async with trio.open_nursery() as nursery, Router([runner]) as router:
        await nursery.start(runner.run)
        start = trio.current_time()
        await router.send(trades(0, 6))
        await wait_all_tasks_blocked()
        assert nothing_written(sink)
        await router.send(trades(6, 6))
        assert await sink.written.receive() == 12  # >= batch_size: a chunk is never split
        await router.send(trades(12, 5))
        await router.send(trades(17, 5))
        assert await sink.written.receive() == 10
        assert trio.current_time() == start  # size alone triggered both, no time passed
    assert [r.trade_id for r in sink.records()] == list(range(22))


@pytest.mark.trio
async def test_flushes_linger_after_the_first_record(mock_clock: trio.testing.MockClock) -> None:
    sink = MemorySink()
    runner = SinkRunner(sink, StatsRegistry("test"), batch_size=1000, linger_s=0.05)
    async with trio.open_nursery() as nursery, Router([runner]) as router:
        await nursery.start(runner.run)
        # wait_all_tasks_blocked() after each send: the batcher must have seen the chunk before
        # the clock moves, or the test would measure trio's scheduling order instead.
        await router.send(trades(0, 3))
        await wait_all_tasks_blocked()
        mock_clock.jump(0.03)
        await router.send(trades(3, 2))  # joins the batch, does not restart its linger
        await wait_all_tasks_blocked()
        mock_clock.jump(0.015)
        await wait_all_tasks_blocked()
        assert nothing_written(sink)
        mock_clock.jump(0.01)  # 0.055 s after the first record, 0.025 s after the second
        assert await sink.written.receive() == 5
        # An idle pipe holds no timer for the next batch: the next one lingers from its own start.
        mock_clock.jump(10)
        await router.send(trades(5, 1))
        await wait_all_tasks_blocked()
        mock_clock.jump(0.045)
        await wait_all_tasks_blocked()
        assert nothing_written(sink)
        mock_clock.jump(0.01)
        assert await sink.written.receive() == 1


@pytest.mark.trio
async def test_close_drains_everything_exactly_once_into_sqlite(tmp_path: Path) -> None:
    stats = StatsRegistry("test")
    sink = SqliteSink("local", tmp_path / "db.sqlite", stats=stats)
    runner = SinkRunner(sink, stats, batch_size=100, linger_s=3600, capacity=4)
    sent = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with Router([runner]) as router:
            for size in [7, 1, 93, 250, 3, 64] * 10:
                chunk: list[Record] = trades(sent, size)
                chunk.append(Checkpoint("binance", "BTCUSDT", sent + size - 1))
                await router.send(chunk)
                sent += size
    # run() returned: the last partial batch was written, then the sink was closed.
    assert sink._conn is None
    sink.open()
    try:
        assert sink.trade_ids("binance", "BTCUSDT") == list(range(sent))
        assert sink.resume_points("binance") == {"BTCUSDT": sent - 1}
    finally:
        sink.close()
    assert stats.counters["sink.local.rows_written"] == sent
    assert stats.counters["sink.local.duplicates_skipped"] == 0
    assert stats.stored_latency.all_time.n == sent


@pytest.mark.trio
async def test_a_blocked_sink_makes_send_block_once_capacity_is_full() -> None:
    gate = threading.Event()
    sink, stats = MemorySink(gate=gate), StatsRegistry("test")
    runner = SinkRunner(sink, stats, batch_size=1, linger_s=0, capacity=2)
    try:
        async with trio.open_nursery() as nursery, Router([runner]) as router:
            await nursery.start(runner.run)
            for i in range(4):
                # 0: in the writer's thread, stuck at the gate; 1: the next batch, full, waiting for
                # the writer; 2 and 3: fill the queue.
                await router.send(trades(i, 1))
                await wait_all_tasks_blocked()
            assert stats.queue_depths()["sink.mem"] == {"used": 2, "capacity": 2}

            sent = trio.Event()

            async def send_one_more() -> None:
                await router.send(trades(4, 1))
                sent.set()

            nursery.start_soon(send_one_more)
            await wait_all_tasks_blocked()
            assert not sent.is_set()
            assert len(runner._room_lot) == 1  # parked, waiting for room: no spool, plain backpressure
            assert sink.calls == []  # the first write is still inside the sink

            gate.set()
            await sent.wait()
    finally:
        gate.set()  # never leave a worker thread stuck, whatever failed
    assert [r.trade_id for r in sink.records()] == [0, 1, 2, 3, 4]



@pytest.mark.trio
async def test_a_failing_sink_gets_the_same_batch_until_it_succeeds(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    sink, stats = MemorySink(fail_first=3), StatsRegistry("test")
    runner = SinkRunner(sink, stats, batch_size=50, linger_s=0.05, retry_base_s=0.2, retry_cap_s=10.0)
    with caplog.at_level(logging.INFO, logger="ingestd.pipeline"):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async with Router([runner]) as router:
                for first in range(0, 50, 10):
                    await router.send(trades(first, 10))
    assert len(sink.calls) == 4 and all(call == sink.calls[0] for call in sink.calls)
    assert [r.trade_id for r in sink.records()] == list(range(50))
    assert len(sink.stored) == 50
    assert stats.counters["sink.mem.write_errors"] == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "three quick failures make one warning, not three"
    assert "store unavailable" in warnings[0].getMessage()
    assert any("succeeded after 3 failed attempts" in r.getMessage() for r in caplog.records)


@pytest.mark.trio
async def test_warnings_about_a_long_outage_are_rate_limited_and_counted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    failures = 60
    sink, stats = MemorySink(fail_first=failures), StatsRegistry("test")
    runner = SinkRunner(sink, stats, retry_base_s=1.0, retry_cap_s=1.0)  # ~0.5 s apart, ~30 s in all
    with caplog.at_level(logging.WARNING, logger="ingestd.pipeline"):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async with Router([runner]) as router:
                await router.send(trades(0, 1))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    reported = [r.args[2] for r in warnings]  # failures since the previous warning
    assert reported[0] == 1
    assert 2 <= len(warnings) <= 1 + failures * 1.0 / 10  # at most one per 10 s of outage
    assert sum(reported) <= failures
    assert stats.counters["sink.mem.write_errors"] == failures
    assert len(sink.stored) == 1


@pytest.mark.trio
async def test_stored_latency_is_recorded_for_trades_only() -> None:
    sink, stats = MemorySink(), StatsRegistry("test")
    runner = SinkRunner(sink, stats)
    one_second_ago = now_us() - 1_000_000
    book = BookTop("binance", "BTCUSDT", 1, 0, 0, 1.0, 1.0, 2.0, 1.0, 1.0, [(1.0, 1.0)], [(2.0, 1.0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with Router([runner]) as router:
            await router.send([*trades(0, 3, ts_us=one_second_ago), book, Checkpoint("binance", "BTCUSDT", 2)])
    assert stats.stored_latency.all_time.n == 3
    assert 900_000 <= stats.stored_latency.all_time.percentile(0.5) < 60_000_000


@pytest.mark.trio
async def test_router_fans_out_and_a_shared_runner_drains_after_its_last_router() -> None:
    shared, own = MemorySink("shared"), MemorySink("own")
    stats = StatsRegistry("test")
    shared_runner, own_runner = SinkRunner(shared, stats), SinkRunner(own, stats)
    spot, futures = Router([shared_runner, own_runner]), Router([shared_runner])
    finished: dict[str, trio.Event] = {"shared": trio.Event(), "own": trio.Event()}

    async def run(runner: SinkRunner, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await runner.run(task_status=task_status)
        finished[runner.sink.name].set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run, shared_runner)
        await nursery.start(run, own_runner)
        await spot.send(trades(0, 2))
        await futures.send(trades(100, 1))
        await spot.aclose()
        await spot.aclose()  # idempotent
        await finished["own"].wait()
        await wait_all_tasks_blocked()
        assert not finished["shared"].is_set(), "futures still feeds the shared sink"
        await futures.send(trades(101, 1))
        await futures.aclose()
    assert sorted(r.trade_id for r in shared.records()) == [0, 1, 100, 101]
    assert [r.trade_id for r in own.records()] == [0, 1]
    with pytest.raises(trio.ClosedResourceError):
        await spot.send(trades(9, 1))


@pytest.mark.trio
async def test_cancelling_a_runner_still_closes_its_sink() -> None:
    sink = MemorySink()
    runner = SinkRunner(sink, StatsRegistry("test"))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        nursery.cancel_scope.cancel()
    assert sink.closed


@pytest.mark.trio
async def test_a_crashed_runner_breaks_its_producers_instead_of_hanging_them() -> None:
    class BrokenSink(MemorySink):
        def write(self, batch: Sequence[Record]) -> None:
            raise ZeroDivisionError("a bug, not a store failure: no retry")

    sink = BrokenSink()
    runner = SinkRunner(sink, StatsRegistry("test"), batch_size=1, capacity=1)
    router = Router([runner])
    with pytest.RaisesGroup(ZeroDivisionError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await router.send(trades(0, 1))
            with pytest.raises(trio.BrokenResourceError):
                for i in range(1, 10):
                    await router.send(trades(i, 1))
    assert sink.closed


def test_capacity_must_be_bounded() -> None:
    with pytest.raises(ValueError):
        SinkRunner(MemorySink(), StatsRegistry("test"), capacity=float("inf"))  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(
    chunk_sizes=st.lists(st.integers(0, 40), max_size=30),
    batch_size=st.integers(1, 64),
    linger_s=st.sampled_from([0.0, 0.01, 1.0]),
)
def test_every_record_is_written_once_in_order_in_bounded_batches(
    chunk_sizes: list[int], batch_size: int, linger_s: float
) -> None:
    sink = MemorySink()

    async def main() -> None:
        runner = SinkRunner(sink, StatsRegistry("test"), batch_size=batch_size, linger_s=linger_s, capacity=3)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async with Router([runner]) as router:
                first = 0
                for size in chunk_sizes:
                    await router.send(trades(first, size))
                    first += size

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [r.trade_id for r in sink.records()] == list(range(sum(chunk_sizes)))
    largest_chunk = max(chunk_sizes, default=0)
    assert all(0 < len(b) <= batch_size + largest_chunk - 1 for b in sink.batches)
