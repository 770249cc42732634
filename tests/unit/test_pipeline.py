"""SinkRunner and Router: batching on size and linger, drain on close, backpressure, retries.

Time is trio's MockClock (pytest-trio's `mock_clock` / `autojump_clock` fixtures) and "nothing happened
yet" is `wait_all_tasks_blocked`: no test sleeps and hopes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
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


def start_sending(nursery: trio.Nursery, router: Router, chunk: list[Record]) -> trio.Event:
    """Send `chunk` from a task of its own; the event is set once the router has taken it."""
    sent = trio.Event()

    async def send() -> None:
        await router.send(chunk)
        sent.set()

    nursery.start_soon(send)
    return sent


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

            sent = start_sending(nursery, router, trades(4, 1))
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


# --- spool: diverting, replaying, handing back ------------------------------------------------------


class FlakySqlite(SqliteSink):
    """A real SqliteSink that fails while `down`, can be held at a `gate`, and after every write checks
    the invariant the spool hand-over exists for: each stored Checkpoint is covered by stored trades.

    Trade ids start at 0 and are contiguous per symbol, so "covered" is a count.
    """

    def __init__(self, name: str, path: Path, stats: StatsRegistry | None = None) -> None:
        super().__init__(name, path, stats=stats)
        self.down = False
        self.gate: threading.Event | None = None
        self.violations: list[tuple[str, int, int]] = []
        self.writes: list[list[Record]] = []  # successful writes, in order

    def open(self) -> None:
        if self.down:
            raise SinkError(f"{self.name}: server down")
        super().open()

    def write(self, batch: Sequence[Record]) -> None:
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        if self.down:
            raise SinkError(f"{self.name}: server down")
        super().write(batch)
        self.writes.append(list(batch))
        for symbol, cp in self.resume_points("binance").items():
            ((covered,),) = self._query(
                "SELECT count(*) FROM ticks WHERE venue = 'binance' AND symbol = ? AND trade_id <= ?", (symbol, cp)
            )
            if covered != cp + 1:
                self.violations.append((symbol, cp, covered))

    def stored(self) -> dict[str, list[int]]:
        reopen = self._conn is None
        if reopen:
            super().open()
        try:
            return {s: self.trade_ids("binance", s) for s in SYMBOLS}
        finally:
            if reopen:
                self.close()


SYMBOLS = ("BTCUSDT", "ETHUSDT")


class Stream:
    """What a feed sends: trades with contiguous ids per symbol, each chunk closed by Checkpoints."""

    def __init__(self, checkpoints: bool = True) -> None:
        self.next = dict.fromkeys(SYMBOLS, 0)
        self.checkpoints = checkpoints

    def chunk(self, n: int) -> list[Record]:
        out: list[Record] = []
        for k in range(n):
            s = SYMBOLS[k % len(SYMBOLS)]
            out.append(Trade("binance", s, self.next[s], 100.0, 1.0, "buy", 1_700_000_000_000_000, 0))
            self.next[s] += 1
        if self.checkpoints:
            out += [Checkpoint("binance", s, i - 1) for s, i in self.next.items() if i]
        return out

    def expected(self) -> dict[str, list[int]]:
        return {s: list(range(n)) for s, n in self.next.items()}


def spooled_runner(sink: Sink, stats: StatsRegistry, spool_dir: Path, **kw) -> SinkRunner:
    kw.setdefault("batch_size", 20)
    kw.setdefault("linger_s", 0.01)
    kw.setdefault("capacity", 4)
    kw.setdefault("retry_base_s", 0.05)
    kw.setdefault("retry_cap_s", 0.5)
    kw.setdefault("spool_after_s", 1.0)
    return SinkRunner(sink, stats, spool_dir=spool_dir, spool_fsync=False, **kw)


async def eventually(predicate, what: str = "condition", real_timeout_s: float = 120.0) -> None:
    """Yield (in trio time, which a mock clock advances) until predicate() holds. The guard is real
    time, so it is a hang detector, not a timing assertion; generous, because spool appends fsync and
    a busy disk can make 150 of them take tens of seconds."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < real_timeout_s, f"{what} never happened"
        await trio.sleep(0.01)


def spool_segments(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*.seg"))


def first_seen_order(batches: list[list[Record]]) -> list[tuple[str, int]]:
    seen: dict[tuple[str, int], None] = {}
    for batch in batches:
        for r in batch:
            if type(r) is Trade:
                seen.setdefault((r.symbol, r.trade_id), None)
    return list(seen)


@pytest.mark.trio
async def test_a_slow_sink_does_not_hold_back_a_fast_one(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    gate = threading.Event()
    fast, slow, stats = MemorySink("fast"), MemorySink("slow", gate=gate), StatsRegistry("test")
    kw = dict(batch_size=5, linger_s=0, capacity=2)
    fast_runner = spooled_runner(fast, stats, tmp_path / "fast", **kw)
    slow_runner = spooled_runner(slow, stats, tmp_path / "slow", **kw)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fast_runner.run)
            await nursery.start(slow_runner.run)
            async with Router([fast_runner, slow_runner]) as router:
                for i in range(40):
                    await router.send(trades(i * 5, 5))
                    # The fast sink stores every chunk as it comes, whatever the slow one does.
                    assert await fast.written.receive() == 5
                # Everything for the slow sink is on disk: the chunks it held in memory when its
                # queue filled (a copy of the one in its stuck write, the next batch, the queue)
                # first, then the rest, each record once.
                await eventually(lambda: stats.counters["spool.slow.spooled_records"] == 200, "spooling")
                assert slow.calls == [], "the slow sink is still stuck in its first write"
                assert slow_runner.state == "spooling" and fast_runner.state == "live"
                assert stats.gauges["sink.slow.state"] == 1 and stats.gauges["sink.fast.state"] == 0
                assert "spool.fast.spooled_batches" not in stats.counters
                gate.set()
                await eventually(lambda: len(slow.stored) == 200, "the slow sink catching up")
                await eventually(lambda: slow_runner.state == "live", "the hand-over back to live")
                await router.send(trades(200, 5))
    finally:
        gate.set()
    assert [r.trade_id for r in fast.records()] == list(range(205))
    assert len(slow.stored) == 205
    assert [t for _, t in first_seen_order(slow.batches)] == list(range(205)), "order held across the hand-over"
    assert stats.counters["spool.slow.replayed_batches"] == stats.counters["spool.slow.spooled_batches"]
    assert spool_segments(tmp_path / "slow") == []


class SteppedSink(MemorySink):
    """A healthy sink that is slower than the feed: each write waits for the test to allow it."""

    def __init__(self, name: str = "mem") -> None:
        super().__init__(name)
        self.allowed = threading.Semaphore(0)

    def write(self, batch: Sequence[Record]) -> None:
        if not self.allowed.acquire(timeout=10):
            raise RuntimeError("the test never allowed this write")
        super().write(batch)


async def stall_a_sole_runner(router: Router, runner: SinkRunner, nursery: trio.Nursery,
                              clock: trio.testing.MockClock) -> trio.Event:
    """Fill the runner (batch_size 5, capacity 2: chunk 0 in the writer's thread, 1 the next batch, 2
    and 3 the queue), start a fifth send and spend 0.9 s of a 1 s stall budget: that send still
    waits, and nothing was diverted. Returns the fifth send's event (start_sending)."""
    for i in range(4):
        await router.send(trades(i * 5, 5))
        await wait_all_tasks_blocked()
    assert runner.stats.queue_depths()[f"sink.{runner.sink.name}"] == {"used": 2, "capacity": 2}
    sent = start_sending(nursery, router, trades(20, 5))
    await wait_all_tasks_blocked()
    clock.jump(0.9)
    await wait_all_tasks_blocked()
    assert not sent.is_set() and runner.state == "live"
    return sent


@pytest.mark.trio
async def test_a_sole_sink_slower_than_a_burst_makes_the_feed_wait_instead_of_spooling(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    sink, stats = SteppedSink(), StatsRegistry("test")
    runner = spooled_runner(sink, stats, tmp_path / "spool", batch_size=5, linger_s=0, capacity=2, max_stall_s=1.0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async with Router([runner]) as router:
                sent = await stall_a_sole_runner(router, runner, nursery, mock_clock)
                sink.allowed.release()  # the sink takes a batch: room, well within the budget
                await sent.wait()
                assert runner.state == "live"
                for _ in range(8):
                    sink.allowed.release()
    finally:
        for _ in range(8):
            sink.allowed.release()
    assert [r.trade_id for r in sink.records()] == list(range(25))
    assert stats.counters["sink.mem.stalls"] == 1
    assert "spool.mem.diversions" not in stats.counters and "spool.mem.spooled_batches" not in stats.counters


@pytest.mark.trio
async def test_a_sole_sink_that_hangs_is_diverted_once_the_stall_budget_is_spent(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    gate = threading.Event()
    sink, stats = MemorySink(gate=gate), StatsRegistry("test")
    runner = spooled_runner(sink, stats, tmp_path / "spool", batch_size=5, linger_s=0, capacity=2, max_stall_s=1.0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async with Router([runner]) as router:
                sent = await stall_a_sole_runner(router, runner, nursery, mock_clock)
                mock_clock.jump(0.2)  # past the budget with no room: divert, and the feed goes on
                await sent.wait()
                assert runner.state == "spooling"
                mock_clock.autojump_threshold = 0  # the timing is checked; let the spooler's naps pass
                for i in range(5, 10):  # diverted: no more waiting
                    await router.send(trades(i * 5, 5))
                assert stats.counters["sink.mem.stalls"] == 1
                await eventually(lambda: stats.counters.get("spool.mem.spooled_records", 0) >= 45, "spooling")
                gate.set()
                await eventually(lambda: runner.state == "live", "the hand-over back to live")
    finally:
        gate.set()
    assert sorted(r.trade_id for r in sink.stored.values()) == list(range(50))
    assert [t for _, t in first_seen_order(sink.batches)] == list(range(50))


@pytest.mark.trio
async def test_a_dead_sink_is_spooled_then_replayed_in_order_and_goes_live(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    runner = spooled_runner(sink, stats, tmp_path / "spool")
    stream = Stream()
    with caplog.at_level(logging.INFO, logger="ingestd.pipeline"):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async with Router([runner]) as router:
                for _ in range(10):
                    await router.send(stream.chunk(7))
                sink.down = True
                for _ in range(20):  # not one of these waits for the dead sink
                    await router.send(stream.chunk(7))
                    await trio.sleep(0.1)
                await eventually(lambda: runner.state == "spooling", "diverting")
                await eventually(lambda: runner.spool is not None and not runner.spool.is_empty, "spooling")
                sink.down = False
                for _ in range(10):
                    await router.send(stream.chunk(7))
                    await trio.sleep(0.1)
                await eventually(lambda: runner.state == "live", "the hand-over back to live")
                for _ in range(5):
                    await router.send(stream.chunk(7))
    assert sink.violations == [], "a checkpoint was stored before the trades it covers"
    assert sink.stored() == stream.expected()
    assert stats.counters["spool.pg.spooled_batches"] > 0
    assert stats.counters["spool.pg.replayed_batches"] == stats.counters["spool.pg.spooled_batches"]
    assert stats.counters["sink.pg.write_errors"] > 0
    assert stats.gauges["spool.pg.bytes"] == 0 and spool_segments(tmp_path / "spool") == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("diverting to the spool" in m for m in messages)
    assert any("back to live" in m for m in messages)


@pytest.mark.trio
async def test_a_sink_that_cannot_be_opened_does_not_stop_the_runner(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    sink.down = True
    runner = spooled_runner(sink, stats, tmp_path / "spool")
    stream = Stream()
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert runner.state == "spooling"
        async with Router([runner]) as router:
            for _ in range(10):
                await router.send(stream.chunk(5))
            await eventually(lambda: stats.counters["spool.pg.spooled_records"] > 0, "spooling")
            sink.down = False
            await eventually(lambda: runner.state == "live", "opening and replaying")
            await router.send(stream.chunk(5))
    assert sink.violations == [] and sink.stored() == stream.expected()


@pytest.mark.trio
async def test_a_full_block_spool_makes_send_wait_and_the_feed_resumes_when_it_drains(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    other = MemorySink("other")
    runner = spooled_runner(sink, stats, tmp_path / "spool", spool_max_bytes=1 << 20, spool_after_s=0.0,
                            batch_size=200, capacity=2)
    other_runner = SinkRunner(other, stats, batch_size=200, linger_s=0.01)
    stream = Stream()
    sent = 0
    done = trio.Event()

    def other_trades() -> int:
        return sum(1 for r in list(other.stored.values()) if type(r) is Trade)  # a copy: a thread adds to it

    async def feed(router: Router) -> None:
        nonlocal sent
        for _ in range(150):  # ~2 MiB of trades: twice the spool
            await router.send(stream.chunk(200))
            sent += 1
        done.set()

    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await nursery.start(other_runner.run)
            async with Router([runner, other_runner]) as router:
                sink.down = True
                nursery.start_soon(feed, router)
                await eventually(lambda: runner.spool_blocked and len(runner._room_lot) == 1, "send waiting for the full spool")
                stalled_at = sent
                await trio.sleep(5)
                await wait_all_tasks_blocked()
                assert sent == stalled_at and not done.is_set(), "block: the feed waits"
                assert runner.spool is not None and runner.spool.fill_ratio > 0.8
                assert stats.gauges["spool.pg.fill_ratio"] > 0.8
                # The waiting send handed its chunk to the other runner first: it has that one too.
                await eventually(lambda: other_trades() == (stalled_at + 1) * 200, "the other sink storing it all")
                sink.down = False
                await done.wait()
    assert sent == 150
    assert sink.violations == [] and sink.stored() == stream.expected()
    assert other_trades() == 150 * 200
    assert stats.counters.get("spool.pg.dropped_records", 0) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("spool full (spool_when_full = block)" in m for m in messages)
    assert any("% full" in m for m in messages), "the 80 % warning"


@pytest.mark.trio
async def test_drop_oldest_never_blocks_and_loses_only_the_oldest_spooled_records(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    runner = spooled_runner(sink, stats, tmp_path / "spool", spool_max_bytes=1 << 20, spool_when_full="drop_oldest",
                            spool_after_s=0.0, batch_size=200, capacity=2)
    stream = Stream(checkpoints=False)  # with checkpoints, the loss would also hide from resume
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with Router([runner]) as router:
            await router.send(stream.chunk(200))
            await eventually(lambda: len(sink.writes) == 1, "the first write")
            sink.down = True
            for _ in range(150):
                await router.send(stream.chunk(200))
            # Back up only once everything is on disk: drops while the replay runs would make a second
            # stretch (as correct, but this test wants the simple picture).
            await eventually(lambda: stats.counters["spool.pg.spooled_records"] == 150 * 200, "spooling it all")
            assert stats.counters["spool.pg.dropped_records"] > 0
            sink.down = False
    dropped = stats.counters["spool.pg.dropped_records"]
    stored = sink.stored()
    expected = stream.expected()
    for s in SYMBOLS:
        missing = sorted(set(expected[s]) - set(stored[s]))
        assert missing, "something was dropped"
        assert missing == list(range(missing[0], missing[-1] + 1)), "one contiguous stretch"
        assert missing[0] >= 100, "the records stored before the outage are all there"
        assert stored[s][-1] == expected[s][-1], "the newest records are all there"
    assert sum(len(expected[s]) - len(stored[s]) for s in SYMBOLS) == dropped


@pytest.mark.trio
async def test_shutdown_spools_what_cannot_be_written_in_time_and_the_next_start_replays_it_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    runner = spooled_runner(sink, stats, tmp_path / "spool", spool_after_s=3600.0, capacity=100)
    stream = Stream()
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with Router([runner]) as router:
            for _ in range(5):
                await router.send(stream.chunk(10))
            await eventually(lambda: len(sink.writes) > 0, "a first write")
            sink.down = True
            for _ in range(20):
                await router.send(stream.chunk(10))
        # SIGTERM: the routers are closed; the sink is still down and would be retried for an hour.
        stopping_at = trio.current_time()
        runner.set_shutdown_deadline(stopping_at + 2.0)
    assert trio.current_time() - stopping_at < 2.5, "run() returned at the shutdown deadline"
    assert runner.state == "spooling"
    unflushed = sum(stream.next.values()) - sum(len(v) for v in sink.stored().values())
    assert unflushed > 0
    assert stats.counters["spool.pg.spooled_records"] >= unflushed
    assert spool_segments(tmp_path / "spool")
    before_restart = len(sink.writes)

    # The next start: the sink is back; live data arrives at once, and must wait for the spool.
    stats2 = StatsRegistry("test")
    sink.down = False
    runner2 = spooled_runner(sink, stats2, tmp_path / "spool")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner2.run)
        async with Router([runner2]) as router:
            first_live = stream.next.copy()
            for _ in range(5):
                await router.send(stream.chunk(10))
    assert sink.violations == [] and sink.stored() == stream.expected()
    after = first_seen_order(sink.writes[before_restart:])
    is_live = [tid >= first_live[s] for s, tid in after]
    assert is_live == sorted(is_live), "every spooled record was stored before any live one"
    assert stats2.counters["spool.pg.replayed_batches"] > 0
    assert spool_segments(tmp_path / "spool") == []


@pytest.mark.trio
async def test_a_cancelled_runner_spools_what_it_holds(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    # A clock that stands still: the exit append is bounded by a timeout, and an autojump clock
    # would let it expire (in trio time) while the append threads work.
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    sink.gate = threading.Event()  # the first write hangs in its thread
    runner = spooled_runner(sink, stats, tmp_path / "spool", capacity=100)
    stream = Stream()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            router = Router([runner])
            for _ in range(20):
                await router.send(stream.chunk(10))
            await wait_all_tasks_blocked()
            assert runner.state == "live" and stats.counters.get("spool.pg.spooled_records", 0) == 0
            nursery.cancel_scope.cancel()  # a second SIGTERM, or the hard deadline
            sink.gate.set()  # the write in flight finishes; cancellation waits for it
    finally:
        sink.gate.set()
    # What the write in flight stored (it finished: a thread cannot be abandoned) plus what went to
    # the spool on the way out covers everything that was sent.
    written = sum(len(b) for b in sink.writes)
    assert written < 20 * 12
    assert written + stats.counters["spool.pg.spooled_records"] >= 20 * 12
    sink.gate = None
    runner2 = spooled_runner(sink, StatsRegistry("test"), tmp_path / "spool")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner2.run)
        await Router([runner2]).aclose()
    assert sink.violations == [] and sink.stored() == stream.expected()


@pytest.mark.trio
async def test_resume_points_of_a_sink_that_is_down_come_from_its_spool(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    runner = spooled_runner(sink, stats, tmp_path / "spool")
    stream = Stream()
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with Router([runner]) as router:
            await router.send(stream.chunk(10))
            await eventually(lambda: len(sink.writes) == 1, "the first write")
            assert await runner.resume_points("binance") == {"BTCUSDT": 4, "ETHUSDT": 4}
            sink.down = True
            await router.send(stream.chunk(10))
            await router.send(stream.chunk(10))
            await eventually(lambda: runner.spool is not None and not runner.spool.is_empty, "spooling")
            sink.close()  # now it cannot even be read
            assert await runner.resume_points("binance") == {"BTCUSDT": 14, "ETHUSDT": 14}
            assert await runner.resume_points("bybit") == {}
            sink.down = False
            sink.open()
        runner.set_shutdown_deadline(trio.current_time())


@settings(max_examples=40, deadline=None)
@given(
    phases=st.lists(
        st.tuples(
            st.sampled_from(["up", "down", "stalled"]),  # the sink during this phase
            st.lists(st.integers(1, 30), max_size=10),  # chunks arriving back to back
            st.sampled_from([0.0, 0.01, 0.3, 2.0]),  # then this long with no new data
        ),
        min_size=1,
        max_size=10,
    ),
    capacity=st.integers(0, 4),
    batch_size=st.integers(1, 40),
    spool_after_s=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_any_interleaving_of_outages_stalls_and_chunks_stores_everything_once_in_order(
    phases: list[tuple[str, list[int], float]], capacity: int, batch_size: int, spool_after_s: float
) -> None:
    """Random interleavings of sink up/down/stalled and chunk arrivals, through the spool and back:
    every trade stored exactly once, and no Checkpoint ever stored ahead of its trades (checked
    after every single write)."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = StatsRegistry("test")
        sink = FlakySqlite("pg", Path(tmp) / "db.sqlite", stats)
        gate = threading.Event()
        gate.set()
        sink.gate = gate
        runner = spooled_runner(sink, stats, Path(tmp) / "spool", capacity=capacity, batch_size=batch_size,
                                spool_after_s=spool_after_s)
        stream = Stream()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(runner.run)
                async with Router([runner]) as router:
                    for state, chunks, pause in phases:
                        sink.down = state == "down"
                        if state == "stalled":
                            gate.clear()
                        else:
                            gate.set()
                        for n in chunks:
                            await router.send(stream.chunk(n))
                        await trio.sleep(pause)
                    gate.set()
                    sink.down = False

        try:
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        finally:
            gate.set()
        assert sink.violations == []
        assert sink.stored() == stream.expected()
        assert runner.state == "live"
        assert spool_segments(Path(tmp) / "spool") == []


_KILLED_CHILD = r"""
import sys, trio
from pathlib import Path
from ingestd.model import Checkpoint, Trade
from ingestd.pipeline import Router, SinkRunner
from ingestd.sinks.base import SinkError
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry

class Flaky(SqliteSink):
    down = False
    def write(self, batch):
        if self.down:
            raise SinkError("server down")
        super().write(batch)

async def main(tmp):
    stats = StatsRegistry("child")
    sink = Flaky("pg", tmp / "db.sqlite", stats=stats)
    runner = SinkRunner(sink, stats, batch_size=50, linger_s=0.005, capacity=8, spool_dir=tmp / "spool",
                        spool_after_s=0.2, retry_base_s=0.05, retry_cap_s=0.2)  # real fsync
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        router = Router([runner])
        sent, told = 0, False
        while True:
            chunk = [Trade("binance", "BTCUSDT", i, 1.0, 1.0, "buy", 0, 0) for i in range(sent, sent + 10)]
            sent += 10
            await router.send(chunk + [Checkpoint("binance", "BTCUSDT", sent - 1)])
            if sent == 2000:
                sink.down = True
            if not told and stats.counters["spool.pg.spooled_batches"] >= 20:
                print("spooling", flush=True)
                told = True
            await trio.sleep(0.001)

trio.run(main, Path(sys.argv[1]))
"""


@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.2])
def test_kill_9_while_the_sink_is_down_then_a_restart_stores_a_gapless_prefix_exactly_once(
    tmp_path: Path, delay_s: float
) -> None:
    """The acceptance scenario in miniature, with a real process, real fsync and a real SIGKILL
    (possibly mid-append): after the restart the sink holds trades 0..N exactly once with its
    checkpoint at N; the feed would refetch from N + 1."""
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(tmp_path)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"spooling\n", "the child never started spooling"
        time.sleep(delay_s)  # real time: where in its loop the kill lands
    finally:
        child.kill()
        child.wait()

    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    runner = spooled_runner(sink, stats, tmp_path / "spool")

    async def restart() -> dict[str, int]:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            points = await runner.resume_points("binance")
            await Router([runner]).aclose()
        return points

    resume = trio.run(restart)
    ids = sink.stored()["BTCUSDT"]
    assert sink.violations == []
    assert ids == list(range(len(ids))), "no gap, no duplicate"
    assert len(ids) > 2000, "what was spooled before the kill was replayed"
    stored_cp = FlakySqlite("check", tmp_path / "db.sqlite")
    stored_cp.open()
    try:
        assert stored_cp.resume_points("binance") == {"BTCUSDT": ids[-1]}
    finally:
        stored_cp.close()
    assert resume["BTCUSDT"] <= ids[-1]
    assert stats.counters["spool.pg.replayed_batches"] >= 20


@pytest.mark.trio
async def test_resume_is_the_minimum_over_sinks_so_a_sink_that_was_down_is_refilled(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from ingestd.supervisor import minimum_resume_points

    stats = StatsRegistry("test")
    up = FlakySqlite("up", tmp_path / "up.sqlite", stats)
    down = FlakySqlite("down", tmp_path / "down.sqlite", stats)
    never = MemorySink("never")  # cannot be read back: {} takes no part
    runners = [spooled_runner(s, stats, tmp_path / s.name) for s in (up, down)] + [SinkRunner(never, stats)]
    stream = Stream()
    async with trio.open_nursery() as nursery:
        for runner in runners:
            await nursery.start(runner.run)
        async with Router(runners) as router:
            await router.send(stream.chunk(20))  # both store ids 0..9 of each symbol
            await eventually(lambda: len(up.writes) == 1 and len(down.writes) == 1, "the first writes")
            down.down = True
            await router.send(stream.chunk(20))  # down spools 10..19
            await eventually(lambda: not runners[1].spool.is_empty, "spooling")  # type: ignore[union-attr]
            # 20..29 reach the healthy sink only (as if the other lost them from memory in a kill -9)
            async with Router([runners[0]]) as only_up:
                await only_up.send(stream.chunk(20))
            await eventually(lambda: len(up.writes) == 3, "the healthy sink storing it all")
            down.close()
            points = [await r.resume_points("binance") for r in runners]
            assert points == [{"BTCUSDT": 29, "ETHUSDT": 29}, {"BTCUSDT": 19, "ETHUSDT": 19}, {}]
            assert minimum_resume_points([p for p in points if p]) == {"BTCUSDT": 19, "ETHUSDT": 19}
            down.down = False
            down.open()
        for runner in runners:
            runner.set_shutdown_deadline(trio.current_time())


@pytest.mark.trio
async def test_past_the_shutdown_deadline_a_feed_still_draining_is_spooled_not_broken(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    stats = StatsRegistry("test")
    sink = FlakySqlite("pg", tmp_path / "db.sqlite", stats)
    sink.down = True
    runner = spooled_runner(sink, stats, tmp_path / "spool", spool_after_s=3600.0)
    stream = Stream()
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with Router([runner]) as router:
            await router.send(stream.chunk(10))
            runner.set_shutdown_deadline(trio.current_time() + 1.0)
            await trio.sleep(2.0)  # the deadline passes while the feed is still draining
            for _ in range(5):
                await router.send(stream.chunk(10))  # must not raise BrokenResourceError
            await eventually(lambda: stats.counters["spool.pg.spooled_records"] == 6 * 12, "spooling the rest")
    sink.down = False
    runner2 = spooled_runner(sink, StatsRegistry("test"), tmp_path / "spool")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner2.run)
        await Router([runner2]).aclose()
    assert sink.violations == [] and sink.stored() == stream.expected()
