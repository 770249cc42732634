"""From feeds to sinks: bounded channels in, whole batches out to a worker thread.

    feed ─Router.send─▶ input channel ─▶ batcher ─▶ hand-off ─▶ writer ─▶ sink.write (worker thread)
                        (`capacity`     (builds    (capacity    (one batch in
                         chunks)         batch k+1)  0)          flight: batch k)

A chunk is a list of records as a feed produced it; the batcher joins chunks into a batch and hands it
over when it holds `batch_size` records or `linger_s` after its first record arrived, whichever comes
first. While the writer's thread stores batch k, the batcher already fills batch k+1, so the sink is
never waiting on Python and Python never waits on the sink. When the writer falls behind, the batcher
blocks on the hand-off, the input channel fills, and `Router.send` blocks: the feed stops reading its
socket and TCP pushes back on the venue. Memory is therefore bounded by two batches plus `capacity`
chunks per sink, and no queue anywhere is unbounded.

A sink that fails gets the same batch again, with capped, jittered backoff: sink writes are idempotent
(see `ingestd.sinks.base`), so a retry never duplicates, and nothing behind the failing batch overtakes
it, so a Checkpoint is never stored ahead of the trades it covers.

Shutdown is closing, not cancelling: when every Router attached to a runner is closed, the runner drains
its channel, writes the last partial batch, closes the sink and returns. Cancellation stops it at once
(after the write in flight, which a thread cannot abandon halfway); what was not stored was not
checkpointed either, so the next start refetches it.
"""

from __future__ import annotations

import logging
from typing import Sequence

import trio

from ingestd.backoff import Backoff
from ingestd.model import Record, Trade
from ingestd.sinks.base import Sink, SinkError
from ingestd.stats import StatsRegistry, now_us

logger = logging.getLogger("ingestd.pipeline")

# An idle writer still proves it is alive this often (the watchdog reads heartbeats); a writer stuck
# in a sink call or retrying a failing batch does not, which is the point.
IDLE_HEARTBEAT_S = 1.0

# A sink that is down fails every retry; one warning per interval, with a count, is enough.
WARNING_INTERVAL_S = 10.0


class SinkRunner:
    """Owns one sink: a bounded input channel, a batcher and a writer task."""

    def __init__(
        self,
        sink: Sink,
        stats: StatsRegistry,
        *,
        batch_size: int = 5000,
        linger_s: float = 0.05,
        capacity: int = 256,
        retry_base_s: float = 0.2,
        retry_cap_s: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if linger_s < 0:
            raise ValueError("linger_s must not be negative")
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError("capacity must be a whole number of chunks: no unbounded queues")
        Backoff(retry_base_s, retry_cap_s)  # validate now rather than at the first failure
        self.sink = sink
        self.stats = stats
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        # The producer side. Routers send through clones of it and close it when the last of them
        # closes (see `_attach_producer`); capacity is counted in chunks, not records.
        self.send_channel, self._receive_channel = trio.open_memory_channel[list[Record]](capacity)
        self._producers = 0
        # Its own thread token, one at a time: sink calls never overlap, and a burst of other
        # to_thread users (DNS lookups, file I/O) cannot starve the sink of trio's default 40.
        self._sink_thread = trio.CapacityLimiter(1)
        self._component = f"sink.{sink.name}"
        self._write_errors = f"sink.{sink.name}.write_errors"
        self._unreported_failures = 0
        self._next_warning_at = float("-inf")
        stats.watch_queue(self._component, self._queue_depth)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the sink (in a thread), call task_status.started(), then batch and write until the input
        channel is closed AND drained, write the final partial batch, close the sink, return."""
        async with self._receive_channel:  # if we die, producers get BrokenResourceError, not a hang
            await trio.to_thread.run_sync(self.sink.open, limiter=self._sink_thread)
            try:
                self.stats.heartbeat(self._component)
                task_status.started()
                async with trio.open_nursery() as nursery:
                    batches_send, batches_receive = trio.open_memory_channel[list[Record]](0)
                    nursery.start_soon(self._batch_chunks, batches_send)
                    nursery.start_soon(self._write_batches, batches_receive)
            finally:
                with trio.CancelScope(shield=True):  # a cancelled run still releases its connection
                    await trio.to_thread.run_sync(self.sink.close, limiter=self._sink_thread)
        logger.info("sink %s: drained and closed", self.sink.name)

    # --- batcher -------------------------------------------------------------------------------

    async def _batch_chunks(self, batches: trio.MemorySendChannel[list[Record]]) -> None:
        chunks = self._receive_channel
        async with batches:  # closing it tells the writer there is nothing more
            batch: list[Record] = []
            more = True
            while more:
                # The linger deadline is set when the batch gets its first record; until then it is
                # infinite, so an idle pipe does not wake up.
                with trio.CancelScope() as linger:
                    while len(batch) < self.batch_size:
                        try:
                            chunk = await chunks.receive()  # cancel-safe: a cancelled receive takes nothing
                        except trio.EndOfChannel:
                            more = False
                            break
                        if chunk and not batch:
                            linger.deadline = trio.current_time() + self.linger_s
                        batch.extend(chunk)
                if batch:
                    await batches.send(batch)  # blocks while the writer is busy: backpressure
                    batch = []

    # --- writer --------------------------------------------------------------------------------

    async def _write_batches(self, batches: trio.MemoryReceiveChannel[list[Record]]) -> None:
        async with batches:
            while True:
                batch = None
                with trio.move_on_after(IDLE_HEARTBEAT_S):
                    try:
                        batch = await batches.receive()
                    except trio.EndOfChannel:
                        return
                if batch is None:
                    self.stats.heartbeat(self._component)  # idle is healthy
                    continue
                await self._write(batch)

    async def _write(self, batch: list[Record]) -> None:
        """Store one batch, retrying the very same batch until the sink takes it."""
        backoff = Backoff(self.retry_base_s, self.retry_cap_s)
        while True:
            try:
                # Not abandon_on_cancel: a sink call always finishes, so calls never overlap.
                await trio.to_thread.run_sync(self.sink.write, batch, limiter=self._sink_thread)
                break
            except SinkError as exc:
                self.stats.incr(self._write_errors)
                delay = backoff.next_delay()
                self._warn_write_failed(exc, len(batch), delay)
                await trio.sleep(delay)
        if backoff.attempt:
            logger.info("sink %s: write succeeded after %d failed attempts", self.sink.name, backoff.attempt)
        self._record_stored_latency(batch)
        self.stats.heartbeat(self._component)

    def _warn_write_failed(self, exc: SinkError, size: int, delay: float) -> None:
        self._unreported_failures += 1
        now = trio.current_time()
        if now < self._next_warning_at:
            return
        logger.warning(
            "sink %s: write of %d records failed (%d failures since the last warning), retrying in %.2fs: %s",
            self.sink.name,
            size,
            self._unreported_failures,
            delay,
            exc,
        )
        self._unreported_failures = 0
        self._next_warning_at = now + WARNING_INTERVAL_S

    def _record_stored_latency(self, batch: Sequence[Record]) -> None:
        """Exchange-to-stored latency of the trades just committed (one pass over the batch)."""
        stored_us = now_us()
        latencies = [stored_us - r.ts_us for r in batch if type(r) is Trade]
        if latencies:
            self.stats.stored_latency.record_many(latencies)

    # --- producers -----------------------------------------------------------------------------

    def _attach_producer(self) -> trio.MemorySendChannel[list[Record]]:
        """A Router's own handle on the input. Several feeds' Routers may share one runner; the
        input closes when the last one detaches (trio's clone-then-close-the-original idiom, with
        the original closed for the caller)."""
        self._producers += 1
        return self.send_channel.clone()

    def _detach_producer(self, channel: trio.MemorySendChannel[list[Record]]) -> None:
        channel.close()
        self._producers -= 1
        if self._producers == 0:
            self.send_channel.close()

    def _queue_depth(self) -> tuple[int, int]:
        s = self._receive_channel.statistics()
        return s.current_buffer_used, int(s.max_buffer_size)


class Router(trio.abc.AsyncResource):
    """Fans every chunk of records out to the sink runners a feed writes to.

    The same list object goes to every runner: a sender must not modify a chunk after sending it.
    """

    def __init__(self, runners: list[SinkRunner]) -> None:
        self._outputs = [(runner, runner._attach_producer()) for runner in runners]
        self._closed = False

    async def send(self, records: list[Record]) -> None:
        """Hand a chunk to every runner, waiting while any of them is full (backpressure: the
        slowest sink sets the pace of the feed)."""
        for _, channel in self._outputs:
            await channel.send(records)

    async def aclose(self) -> None:
        """Close this feed's inputs; a runner drains and finishes once all its Routers are closed."""
        if not self._closed:
            self._closed = True
            for runner, channel in self._outputs:
                runner._detach_producer(channel)
        await trio.lowlevel.checkpoint()
