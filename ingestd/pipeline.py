"""From feeds to sinks: bounded buffers in, whole batches out to a worker thread, a disk spool aside.

    feed ─Router.send─▶ runner: batch k+1 + queue ─▶ writer ─▶ sink.write (worker thread, batch k)
                                │  (live)                  ▲
                                └─▶ pending ─▶ spooler ─▶ spool (disk) ── replay ──┘
                                   (diverted)

Live path. A chunk is a list of records as a feed produced it. `Router.send` hands it to each runner
without waiting: it joins the batch being built (until `batch_size` records; a chunk is never split)
or waits in the queue (`capacity` chunks). The writer takes the batch when it is full, or `linger_s`
after its first record arrived, and stores it from a worker thread; meanwhile batch k+1 fills up, so
the sink never waits on Python and Python never waits on the sink.

Diverted path (runners with a spool). When a runner's queue is full, or its sink keeps failing for
`spool_after_s`, the runner *diverts* (a Router's only runner first lets a full queue make the feed
wait, up to `max_stall_s`, while its sink is healthy; see "Backpressure"): in one synchronous step
(no await, so nothing can slip in between) it moves everything it holds in memory - a copy of the
batch being written, the batch being built, the queue - to `pending`, in order, and from then on
every new chunk goes to `pending` too. A spooler task appends `pending` to the disk spool in whole
batches. So the spool always holds one contiguous stretch of the stream, starting at the first
record the sink had not confirmed: nothing older is ever appended after something newer, and no
chunk for that sink ever overtakes another. The batch being written when the runner diverted may
reach the sink twice (live, then from the spool): sink writes are idempotent
(`ingestd.sinks.base`), so that costs a duplicate, never a record.

Replay and the hand-over back to live. While diverted, the writer replays the spool oldest first:
`peek`, write, `commit`. A failing sink is probed with capped, jittered backoff (the runner stays
healthy; `sink.<name>.state` says "spooling"). When the spool is empty, no append is in flight, and
`pending` holds no more than `capacity` chunks, the writer moves `pending` into the live batch and
queue and switches back to live, again in one synchronous step: `pending` was the tail of the stream
right after the last spooled record, so order holds across the switch. (Requiring `pending` to fit
the queue, instead of `pending` to be empty, is what lets a runner under steady load get back to
live at all: new chunks keep arriving while the spooler lingers.)

Order matters because a Checkpoint says "every trade up to here is stored": with the spool as one
contiguous stretch after what the sink has, and writes in stream order, a sink never stores a
Checkpoint before the trades it covers, and whatever is on disk at a `kill -9` (sink + spool) is a
prefix of the stream (plus duplicates); what was only in memory is newer than all of it, was never
checkpointed anywhere, and the feed refetches it on the next start.

Backpressure and bounds. Per runner, memory holds at most the batch being written, the batch being
built, `capacity` chunks in the queue and `2 * capacity + 2` chunks in `pending`. `Router.send`
waits on a runner only when that runner's `pending` is full, which happens when the disk is slower
than the feed or, with `spool_when_full = "block"`, when the spool is full. Then `send` waits for
that runner (after handing the chunk to the others), so the feed - one stream for all its sinks -
slows to what the blocked sink's spool takes, and the other sinks get data at that pace. The feed
stops reading its sockets, TCP pushes back on the venue, and the systemd watchdog, gated on feed
heartbeats, restarts the service if that lasts; a venue that disconnects us is reconnected, and
gaps are refetched (backfill/resume). `drop_oldest` never waits (the oldest spooled data of that
sink is lost instead, counted). A runner without a spool (tests, `spool_dir=None`) keeps the plain
behaviour: a full queue makes `send` wait, a failing batch is retried until it is stored, and
nothing overtakes it.

A Router's only runner may also make `send` wait briefly, since that holds back no other sink: a
full queue in front of a sink whose last call succeeded makes the feed wait for room, up to
`max_stall_s`, before the runner diverts. A sink that is merely slower than a burst frees room with
every batch it takes, so it stays live (diverting it would cost an fsynced append and a read-back
of every record, and halved the durable rate of a long blast in bench/vs_cryptofeed.py); a hung
sink frees none and is diverted after `max_stall_s`. With several runners a full queue diverts at
once, so a slow sink never holds back the others beyond its own buffer.

Shutdown. When every Router attached to a runner is closed, the runner drains: it writes what it
holds (or spools it, if the sink keeps failing) and replays its spool, retrying a failing sink,
then closes the sink and returns. `set_shutdown_deadline(t)` bounds that (the supervisor sets it a
little before its own hard deadline): at trio time `t` the runner stops writing to the sink and
appends whatever it holds in memory to the spool (one quick append per batch); chunks a feed still
drains into it after `t` are spooled too. The next start replays the spool before any live data.
Cancellation (the hard deadline, a second signal) ends it at once, after the sink write in flight
(a thread cannot be abandoned halfway) and after one last shielded, time-bounded append of what is
still in memory. Only a "block" spool that is full loses that remainder (logged, counted as
`spool.<sink>.refused_records`): it is the newest data, never checkpointed, so resume refetches it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import trio

from ingestd.backoff import Backoff
from ingestd.model import Checkpoint, Record, Trade
from ingestd.sinks.base import Sink, SinkError
from ingestd.sinks.spool import Spool, SpoolError
from ingestd.stats import StatsRegistry, now_us

logger = logging.getLogger("ingestd.pipeline")
T = TypeVar("T")

# An idle writer still proves it is alive this often (the watchdog reads heartbeats); a writer stuck
# in a sink call does not, which is the point. A runner waiting for a dead sink while it spools is
# doing its job, and does prove it.
IDLE_HEARTBEAT_S = 1.0

# A sink that is down fails every retry; one warning per interval, with a count, is enough.
WARNING_INTERVAL_S = 10.0

# The last append of what is still in memory when a runner is cancelled (shielded): bounded, so a
# wedged disk cannot hold up the exit for good.
EXIT_SPOOL_TIMEOUT_S = 2.0

# `sink.<name>.state` gauge values (gauges are numbers); `SinkRunner.state` has the names.
STATES = {"live": 0, "spooling": 1, "replaying": 2}


class SinkRunner:
    """Owns one sink: the live batch and queue, the writer, and (with a spool) the spooler."""

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
        spool_dir: str | Path | None = None,
        spool_max_bytes: int = 1 << 30,
        spool_when_full: str = "block",
        spool_after_s: float = 5.0,
        spool_fsync: bool = True,
        max_stall_s: float = 0.5,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if linger_s < 0:
            raise ValueError("linger_s must not be negative")
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError("capacity must be a whole number of chunks: no unbounded queues")
        if spool_after_s < 0:
            raise ValueError("spool_after_s must not be negative")
        if max_stall_s < 0:
            raise ValueError("max_stall_s must not be negative")
        Backoff(retry_base_s, retry_cap_s)  # validate now rather than at the first failure
        self.sink = sink
        self.stats = stats
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.capacity = capacity
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.spool_after_s = spool_after_s
        self.max_stall_s = max_stall_s
        self.spool: Spool | None = None
        if spool_dir is not None:
            self.spool = Spool(
                spool_dir, name=sink.name, max_bytes=spool_max_bytes, when_full=spool_when_full,
                stats=stats, fsync=spool_fsync,
            )
        name = sink.name
        # Live path: the batch being built, the queue behind it, the batch being written.
        self._batch: list[Record] = []
        self._batch_deadline = math.inf  # linger_s after the batch's first record
        self._queue: deque[list[Record]] = deque()
        self._inflight: list[Record] | None = None
        self._inflight_spooled = False
        self._full_since = math.inf  # when a sole sink's full buffer first made a producer wait
        # Diverted path: chunks waiting for the spooler, oldest first, with their arrival time.
        self._diverted = False
        self._pending: deque[tuple[float, list[Record]]] = deque()
        self._pending_records = 0
        self._pending_capacity = 2 * capacity + 2
        self._spooling_batch: list[Record] | None = None  # taken from pending, not yet on disk
        self._replay_waiting = False  # the writer has replayed everything and waits for the spooler
        # Operator `flush`: every record ever taken, and while a flush waits, the count it waits for.
        self._accepted_records = 0
        self._flush_waiters = 0
        self._flush_until = 0
        self._flush_lot = trio.lowlevel.ParkingLot()
        # Lifecycle.
        self._producers = 0
        self._closing = False  # every producer detached: drain and return
        self._giving_up = False  # the shutdown deadline passed: spool what is left, write no more
        self._finished = False  # run() is over: producers get BrokenResourceError
        self._writer_done = False
        self._sink_open = False
        self._sink_ok = True  # the last sink call succeeded: required before handing back to live
        self._spool_open = False
        self._shutdown_at = math.inf
        self._shutdown_set = trio.Event()
        # Wake-ups. Every waiter re-checks its condition, so a spurious wake-up is harmless.
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._spooler_lot = trio.lowlevel.ParkingLot()
        self._room_lot = trio.lowlevel.ParkingLot()  # producers waiting for room
        self._spool_room_lot = trio.lowlevel.ParkingLot()  # the spooler waiting for a commit ("block")
        # Its own thread token, one at a time: sink calls never overlap, and a burst of other
        # to_thread users (DNS lookups, file I/O) cannot starve the sink of trio's default 40.
        self._sink_thread = trio.CapacityLimiter(1)
        self._spool_thread = trio.CapacityLimiter(1)  # the spool's file I/O never waits on the sink
        self._component = f"sink.{name}"
        self._write_errors = f"sink.{name}.write_errors"
        self._state_gauge = f"sink.{name}.state"
        self._stalls = f"sink.{name}.stalls"  # times a full buffer made the feed wait (see _may_stall)
        self._c = {k: f"spool.{name}.{k}" for k in (
            "spooled_batches", "spooled_records", "replayed_batches", "replayed_records",
            "diversions", "refused_records", "append_errors",
        )}
        self.state = "live"
        stats.set_gauge(self._state_gauge, STATES["live"])
        self.spool_blocked = False  # a "block" spool is full and refuses the batch the spooler holds
        self._unreported_failures = 0
        self._next_warning_at = -math.inf
        self._next_spool_error_at = -math.inf
        stats.watch_queue(self._component, self._queue_depth)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the spool and the sink (in threads), call task_status.started(), then write, spool and
        replay until every producer is closed and everything is stored or spooled; close, return.

        A sink that cannot be opened (SinkError) is not fatal with a spool: the runner starts
        diverted and keeps trying. A spool left from a previous run is replayed before live data.
        A drain keeps trying a failing sink until `set_shutdown_deadline`'s deadline; without one,
        for as long as it takes (as a runner without a spool always does)."""
        try:
            if self.spool is not None:
                await trio.to_thread.run_sync(self.spool.open, limiter=self._spool_thread)
                self._spool_open = True
                if not self.spool.is_empty:
                    self._divert("its spool holds batches from a previous run: replaying them first", quiet=True)
            try:
                await trio.to_thread.run_sync(self.sink.open, limiter=self._sink_thread)
                self._sink_open = True
            except SinkError as exc:
                if self.spool is None:
                    raise
                self.stats.incr(self._write_errors)
                self._sink_ok = False
                self._divert(f"it cannot be opened ({exc})")
            self.stats.heartbeat(self._component)
            task_status.started()
            async with trio.open_nursery() as outer:
                outer.start_soon(self._watch_shutdown_deadline)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    if self.spool is not None:
                        nursery.start_soon(self._spool_loop)
                outer.cancel_scope.cancel()
        finally:
            self._finished = True
            self._room_lot.unpark_all()
            self._flush_lot.unpark_all()
            with trio.CancelScope(shield=True):  # a cancelled run still spools and releases its connection
                if self._spool_open:
                    with trio.move_on_after(EXIT_SPOOL_TIMEOUT_S):
                        await self._spool_what_is_left()
                if self._sink_open:
                    await trio.to_thread.run_sync(self.sink.close, limiter=self._sink_thread)
                if self._spool_open:
                    await trio.to_thread.run_sync(self.spool.close, limiter=self._spool_thread)  # type: ignore[union-attr]
        logger.info("sink %s: drained and closed", self.sink.name)

    def set_shutdown_deadline(self, when: float) -> None:
        """At trio time `when`, stop writing to the sink and spool whatever is still in memory, so
        the runner can return before a harder deadline cancels it (the supervisor's)."""
        self._shutdown_at = min(self._shutdown_at, when)
        self._shutdown_set.set()

    async def _watch_shutdown_deadline(self) -> None:
        await self._shutdown_set.wait()
        await trio.sleep_until(self._shutdown_at)
        self._giving_up = True
        if self.spool is not None:
            self._divert("the shutdown deadline passed: spooling what is not stored yet")
        self._wake_all()

    async def resume_points(self, venue: str) -> dict[str, int]:
        """Where this sink stands: its stored checkpoints, or, while it cannot be read, the highest
        Checkpoint per symbol in its spool (a lower bound of what it will hold once replayed)."""
        if self._sink_open:
            try:
                return await trio.to_thread.run_sync(self.sink.resume_points, venue, limiter=self._sink_thread)
            except SinkError as exc:
                logger.warning("sink %s: cannot read resume points (%s)", self.sink.name, exc)
        if self.spool is None or not self._spool_open:
            return {}
        spooled = await trio.to_thread.run_sync(self.spool.scan, {Checkpoint.KIND}, limiter=self._spool_thread)
        points: dict[str, int] = {}
        for cp in spooled:
            if cp.venue == venue and cp.trade_id > points.get(cp.symbol, -1):  # type: ignore[union-attr]
                points[cp.symbol] = cp.trade_id  # type: ignore[union-attr]
        if points:
            logger.info("sink %s: unavailable; resume points for %d symbols taken from its spool", self.sink.name, len(points))
        return points

    # --- operator flush ------------------------------------------------------------------------

    def held_records(self) -> int:
        """Records in memory that are neither stored nor spooled yet."""
        held = len(self._batch) + sum(map(len, self._queue)) + self._pending_records
        if self._inflight is not None and not self._inflight_spooled:  # else its copy is in pending
            held += len(self._inflight)
        if self._spooling_batch is not None:
            held += len(self._spooling_batch)
        return held

    def _released_records(self) -> int:
        # Memory is first in, first out (live: in flight, batch, queue; diverted: the batch being
        # spooled, pending), so once this many have left it, every earlier record has.
        return self._accepted_records - self.held_records()

    async def flush(self, timeout_s: float) -> dict:
        """Operator `flush`: write what this runner holds now (to the sink, or to the spool while
        diverted) without waiting out `linger_s`, and wait up to `timeout_s` until it has left
        memory. Returns {"records": held at the call, "done": all of them stored or spooled,
        "state": live | spooling | replaying}."""
        held = self.held_records()
        target = self._accepted_records
        if held and not self._finished:
            self._flush_until = max(self._flush_until, target)
            self._flush_waiters += 1
            self._wake_all()
            try:
                with trio.move_on_after(timeout_s):
                    while self._released_records() < target and not self._finished:
                        with trio.move_on_after(0.25):  # re-check even if a wake-up was missed
                            await self._flush_lot.park()
            finally:
                self._flush_waiters -= 1
        return {"records": held, "done": self._released_records() >= target, "state": self.state}

    def _flush_wanted(self) -> bool:
        return self._flush_waiters > 0 and self._released_records() < self._flush_until

    # --- producers -----------------------------------------------------------------------------

    def _offer(self, chunk: list[Record], sole: bool = False) -> bool:
        """Take a chunk without waiting, if there is room (True). Synchronous on purpose: deciding
        between live and diverted and enqueueing is one step no other task can interleave with.

        `sole`: this runner is the only one of the Router offering the chunk, so making the feed
        wait holds back no other sink; see `_may_stall`."""
        if self._finished:
            raise trio.BrokenResourceError(f"sink {self.sink.name}: its runner has stopped")
        if not chunk:
            return True
        if self._diverted:
            if len(self._pending) >= self._pending_capacity:
                return False
            self._add_pending(chunk, trio.current_time())
        elif not self._queue and len(self._batch) < self.batch_size:
            if not self._batch:
                self._batch_deadline = trio.current_time() + self.linger_s
            self._batch.extend(chunk)
            self._writer_lot.unpark_all()
        elif len(self._queue) < self.capacity:
            self._queue.append(chunk)
        elif self.spool is None:
            return False  # plain backpressure
        elif sole and self._may_stall():
            return False  # brief backpressure: room comes with the writer's next batch
        else:
            self._divert("its buffer is full (the sink is slower than the feed)")
            self._add_pending(chunk, trio.current_time())
        self._full_since = math.inf
        self._accepted_records += len(chunk)
        return True

    def _may_stall(self) -> bool:
        """A full buffer in front of a healthy sink that is merely slower than a burst: make the
        feed wait for room, up to `max_stall_s` from the first refusal, rather than divert. Diverting
        a sink that is up costs an fsynced append and a read-back of every record for nothing, and
        under a long blast it halves the durable rate. A sink that is failing, or hung (no room for
        `max_stall_s`), is diverted as before, so the venue socket is held back at most that long."""
        if not self._sink_ok or self._closing or self._giving_up or self.max_stall_s <= 0:
            return False
        now = trio.current_time()
        if self._full_since == math.inf:
            self._full_since = now
            self.stats.incr(self._stalls)
        return now - self._full_since < self.max_stall_s

    async def _put(self, chunk: list[Record], sole: bool = False) -> None:
        """Wait for room, then take the chunk (cancel-safe: a cancelled put takes nothing)."""
        while not self._offer(chunk, sole):
            # A stalled producer wakes at the end of the stall budget to divert, room or not.
            with trio.move_on_at(self._full_since + self.max_stall_s if sole else math.inf):
                await self._room_lot.park()

    def _attach_producer(self) -> None:
        self._producers += 1

    def _detach_producer(self) -> None:
        self._producers -= 1
        if self._producers == 0:
            self._closing = True
            self._wake_all()

    def _queue_depth(self) -> tuple[int, int]:
        if self._diverted:
            return len(self._pending), self._pending_capacity
        return len(self._queue), self.capacity

    # --- diverting and handing back ------------------------------------------------------------

    def _divert(self, why: str, *, quiet: bool = False) -> None:
        """Route this runner's data to the spool from now on, starting with everything it holds in
        memory, in stream order. Synchronous: nothing can be enqueued halfway through."""
        if self._diverted or self.spool is None:
            return
        moved: list[list[Record]] = []
        if self._inflight is not None and not self._inflight_spooled:
            moved.append(self._inflight)  # a copy: the write in flight may still succeed (a duplicate)
            self._inflight_spooled = True
        if self._batch:
            moved.append(self._batch)
            self._batch = []
            self._batch_deadline = math.inf
        moved.extend(self._queue)
        self._queue.clear()
        self._diverted = True
        now = trio.current_time()
        for chunk in moved:
            self._add_pending(chunk, now)
        self._set_state("spooling")
        self.stats.incr(self._c["diversions"])
        records = sum(len(c) for c in moved)
        log = logger.info if quiet else logger.warning
        log("sink %s: diverting to the spool: %s (%d records in memory go first)", self.sink.name, why, records)
        self._wake_all()

    def _add_pending(self, chunk: list[Record], now: float) -> None:
        self._pending.append((now, chunk))
        self._pending_records += len(chunk)
        self._spooler_lot.unpark_all()

    def _try_resume_live(self) -> bool:
        """Back to live if the sink took the last write, the spool is empty, no append is in flight
        and `pending` fits the queue. Synchronous: `pending` becomes the live batch and queue in one
        step, in order. (Without the first condition a sink that is down, with little pending, would
        bounce between live and diverted and never spool.)"""
        assert self.spool is not None
        if not (self._sink_open and self._sink_ok) or not self.spool.is_empty or self._spooling_batch is not None:
            return False
        if len(self._pending) > self.capacity:
            return False
        chunks = [chunk for _, chunk in self._pending]
        first_arrival = self._pending[0][0] if self._pending else math.inf
        self._pending.clear()
        self._pending_records = 0
        self._diverted = False
        for chunk in chunks:
            if not self._queue and len(self._batch) < self.batch_size:
                self._batch.extend(chunk)
            else:
                self._queue.append(chunk)
        self._batch_deadline = first_arrival + self.linger_s if self._batch else math.inf
        self._set_state("live")
        logger.info("sink %s: spool replayed; back to live", self.sink.name)
        self._wake_all()
        return True

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.stats.set_gauge(self._state_gauge, STATES[state])

    def _wake_all(self) -> None:
        for lot in (self._writer_lot, self._spooler_lot, self._room_lot, self._spool_room_lot):
            lot.unpark_all()

    async def _nap(self, seconds: float, until: Callable[[], bool]) -> None:
        """Sleep up to `seconds`, waking early once `until()` holds (checked at every wake-up)."""
        with trio.move_on_after(seconds):
            while not until():
                await self._writer_lot.park()

    # --- writer --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while True:
                if self._diverted:
                    if not await self._replay():
                        return
                    continue
                if self._batch and (
                    len(self._batch) >= self.batch_size
                    or trio.current_time() >= self._batch_deadline
                    or self._closing
                    or self._giving_up
                    or self._flush_wanted()
                ):
                    await self._write_live(self._take_batch())
                    continue
                if self._closing and not self._batch:
                    return
                # The linger deadline is set when the batch gets its first record; until then the
                # wait is only the heartbeat's, so an idle pipe barely wakes up.
                with trio.move_on_at(min(self._batch_deadline, trio.current_time() + IDLE_HEARTBEAT_S)) as idle:
                    await self._writer_lot.park()
                if idle.cancelled_caught and not self._batch:
                    self.stats.heartbeat(self._component)  # idle is healthy
        finally:
            self._writer_done = True
            self._spooler_lot.unpark_all()
            self._spool_room_lot.unpark_all()

    def _take_batch(self) -> list[Record]:
        batch, self._batch = self._batch, []
        while self._queue and len(self._batch) < self.batch_size:
            self._batch.extend(self._queue.popleft())
        self._batch_deadline = trio.current_time() + self.linger_s if self._batch else math.inf
        self._room_lot.unpark_all()
        return batch

    async def _write_live(self, batch: list[Record]) -> None:
        """Store one batch. Without a spool, retry the very same batch until the sink takes it. With
        one, retry for `spool_after_s`, then divert (the batch goes to the spool first)."""
        # `_inflight` is cleared only once the batch is stored or in the spool's hands: if this is
        # cancelled, the exit path (`_spool_what_is_left`) still finds it.
        self._inflight, self._inflight_spooled = batch, False
        backoff = Backoff(self.retry_base_s, self.retry_cap_s)
        give_up_at = trio.current_time() + self.spool_after_s
        while True:
            try:
                # Not abandon_on_cancel: a sink call always finishes, so calls never overlap.
                await trio.to_thread.run_sync(self.sink.write, batch, limiter=self._sink_thread)
                self._sink_ok = True
                break
            except SinkError as exc:
                self.stats.incr(self._write_errors)
                self._sink_ok = False
                if not self._diverted:
                    delay = backoff.next_delay()
                    if self.spool is not None and trio.current_time() + delay >= give_up_at:
                        self._divert(f"writes failed for {self.spool_after_s:g}s ({exc})")
                    else:
                        self._warn_write_failed(exc, f"write of {len(batch)} records", delay)
                        await self._nap(delay, lambda: self._diverted)
                if self._diverted:
                    self._inflight = None  # a copy is in the spool's hands; replay takes over
                    return
        self._inflight = None
        self._flush_lot.unpark_all()
        if backoff.attempt:
            logger.info("sink %s: write succeeded after %d failed attempts", self.sink.name, backoff.attempt)
        self._record_stored_latency(batch)
        self.stats.heartbeat(self._component)

    async def _replay(self) -> bool:
        """Diverted: store the spool, oldest first, then hand back to live (True). False: stop now
        (the shutdown deadline passed)."""
        assert self.spool is not None
        backoff = Backoff(self.retry_base_s, self.retry_cap_s)
        while not self._giving_up:
            try:
                if not self._sink_open:
                    await trio.to_thread.run_sync(self.sink.open, limiter=self._sink_thread)
                    self._sink_open = True
                    logger.info("sink %s: opened; replaying its spool", self.sink.name)
                    continue
                if self._try_resume_live():
                    return True
                if self.spool.is_empty:
                    await self._wait_for_spooler()
                    continue
                batch = await trio.to_thread.run_sync(self.spool.peek, limiter=self._spool_thread)
                if batch is None:
                    continue
                await trio.to_thread.run_sync(self.sink.write, batch, limiter=self._sink_thread)
                self._sink_ok = True
            except SinkError as exc:
                self.stats.incr(self._write_errors)
                what = f"write of {len(batch)} spooled records" if self._sink_open else "opening the sink"
                self._sink_ok = False
                self._set_state("spooling")
                # Draining or not, keep trying: the shutdown deadline (set_shutdown_deadline) is what
                # stops a drain, leaving the rest in the spool for the next start.
                delay = backoff.next_delay()
                self._warn_write_failed(exc, what, delay)
                self.stats.heartbeat(self._component)  # waiting for the sink while spooling is healthy
                await self._nap(delay, lambda: self._giving_up)
                continue
            await trio.to_thread.run_sync(self.spool.commit, limiter=self._spool_thread)
            if backoff.attempt:
                logger.info("sink %s: back after %d failed attempts; replaying its spool", self.sink.name, backoff.attempt)
                backoff.reset()
            self._set_state("replaying")
            self.stats.incr(self._c["replayed_batches"])
            self.stats.incr(self._c["replayed_records"], len(batch))
            self._record_stored_latency(batch)
            self.stats.heartbeat(self._component)
            self._spool_room_lot.unpark_all()
        return False

    async def _wait_for_spooler(self) -> None:
        self._replay_waiting = True
        self._spooler_lot.unpark_all()  # no more lingering: the writer is waiting for it
        try:
            with trio.move_on_after(IDLE_HEARTBEAT_S) as idle:
                await self._writer_lot.park()
            if idle.cancelled_caught:
                self.stats.heartbeat(self._component)
        finally:
            self._replay_waiting = False

    def _warn_write_failed(self, exc: SinkError, what: str, delay: float) -> None:
        self._unreported_failures += 1
        now = trio.current_time()
        if now < self._next_warning_at:
            return
        logger.warning(
            "sink %s: %s failed (%d failures since the last warning), retrying in %.2fs: %s",
            self.sink.name,
            what,
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

    # --- spooler -------------------------------------------------------------------------------

    async def _spool_loop(self) -> None:
        """Append `pending` to the spool in order, in batches of about `batch_size` records."""
        while True:
            if not self._pending:
                # Past the shutdown deadline the writer stops, but the feed may still be draining
                # into the router: keep spooling until every producer has closed.
                if self._writer_done and self._closing:
                    return
                await self._spooler_lot.park()
                continue
            urgent = (
                self._closing or self._giving_up or self._writer_done or self._replay_waiting
                or self._pending_records >= self.batch_size or len(self._pending) >= self._pending_capacity
                or self._flush_waiters > 0
            )
            linger_until = self._pending[0][0] + self.linger_s
            if not urgent and trio.current_time() < linger_until:
                with trio.move_on_at(linger_until):
                    await self._spooler_lot.park()
                continue
            batch = self._take_pending()
            self._spooling_batch = batch  # left set if cancelled: the exit path appends it first
            await self._append(batch)
            self._spooling_batch = None
            self._writer_lot.unpark_all()
            self._flush_lot.unpark_all()

    def _take_pending(self) -> list[Record]:
        batch: list[Record] = []
        while self._pending and (not batch or len(batch) + len(self._pending[0][1]) <= self.batch_size):
            _, chunk = self._pending.popleft()
            batch.extend(chunk)
        self._pending_records -= len(batch)
        self._room_lot.unpark_all()
        return batch

    async def _append(self, batch: list[Record]) -> bool:
        """Append one batch, waiting while a "block" spool is full. False: given up (the writer has
        stopped, so no commit will make room; the records are lost to this sink)."""
        assert self.spool is not None
        blocked = False
        backoff = Backoff(self.retry_base_s, self.retry_cap_s)
        while True:
            try:
                if await trio.to_thread.run_sync(self.spool.append, batch, limiter=self._spool_thread):
                    self.stats.incr(self._c["spooled_batches"])
                    self.stats.incr(self._c["spooled_records"], len(batch))
                    if blocked:
                        self.spool_blocked = False
                        logger.info("sink %s: the spool has room again", self.sink.name)
                    return True
                error = None
            except SpoolError as exc:
                self.stats.incr(self._c["append_errors"])
                error = exc
            if self._writer_done or self._giving_up:
                self.spool_blocked = False
                self.stats.incr(self._c["refused_records"], len(batch))
                logger.warning(
                    "sink %s: %d records could not be spooled (%s) and are dropped; nothing after them was"
                    " stored, so the feed refetches them from the last checkpoint on the next start",
                    self.sink.name, len(batch), error or "spool full",
                )
                return False
            if error is not None:
                now = trio.current_time()
                if now >= self._next_spool_error_at:
                    logger.error("sink %s: cannot append to the spool, retrying: %s", self.sink.name, error)
                    self._next_spool_error_at = now + WARNING_INTERVAL_S
                with trio.move_on_after(backoff.next_delay()):
                    await self._spool_room_lot.park()
                continue
            if not blocked:
                blocked = self.spool_blocked = True
                logger.warning(
                    "sink %s: spool full (spool_when_full = block): holding %d records in memory; the feed"
                    " waits once %d chunks are pending",
                    self.sink.name, len(batch) + self._pending_records, self._pending_capacity,
                )
            with trio.move_on_after(IDLE_HEARTBEAT_S):
                await self._spool_room_lot.park()

    async def _spool_what_is_left(self) -> None:
        """On the way out: append what is still in memory (the runner was cancelled, or the spool
        refused it). Runs shielded and time-bounded."""
        if not (self._batch or self._queue or self._pending or self._spooling_batch is not None
                or (self._inflight is not None and not self._inflight_spooled)):
            return
        leftover = self._spooling_batch  # older than everything in pending
        self._spooling_batch = None
        self._diverted = False  # _divert again: also takes the live batch and queue, in order
        self._divert("the runner is stopping", quiet=True)
        batches = [leftover] if leftover else []
        while self._pending:
            batches.append(self._take_pending())
        self._writer_done = True  # nothing will make room any more
        spooled = 0
        for i, batch in enumerate(batches):
            if not await self._append(batch):
                lost = sum(len(b) for b in batches[i + 1 :])
                self.stats.incr(self._c["refused_records"], lost)
                break
            spooled += len(batch)
        logger.info("sink %s: spooled %d records still in memory at exit", self.sink.name, spooled)


class Router(trio.abc.AsyncResource):
    """Fans every chunk of records out to the sink runners a feed writes to.

    The same list object goes to every runner: a sender must not modify a chunk after sending it.
    """

    def __init__(self, runners: list[SinkRunner]) -> None:
        self._runners = list(runners)
        self._sole = len(self._runners) == 1  # waiting on its runner holds back no other sink
        for runner in self._runners:
            runner._attach_producer()
        self._closed = False

    @property
    def sinks(self) -> list[Sink]:
        """The sinks behind this router, in config order: for a feed that keeps reference data in
        its own store (the Polymarket whales table), never for writing records around the runners."""
        return [runner.sink for runner in self._runners]

    def store_in_sinks(self, open_store: Callable[[Sink], T | None], name: str = "") -> T | None:
        """A feed's reference table (whales, DEX pools) in the store it writes to: `open_store` of
        the sink called `name`, or of the first sink it accepts (it returns None for sinks that
        cannot hold the table, such as Redis or Kafka)."""
        for sink in self.sinks:
            if name and sink.name != name:
                continue
            store = open_store(sink)
            if store is not None:
                return store
        return None

    async def send(self, records: list[Record]) -> None:
        """Hand a chunk to every runner. A runner with room takes it at once (a slow or dead sink's
        runner spools instead of making anyone wait); only a runner that has no room at all (no
        spool, or a full "block" spool) makes `send` wait, after the others have the chunk. The
        exception is a Router with one runner: there a healthy sink's full queue makes `send` wait
        up to `max_stall_s` for room before that runner spools, since no other sink is held back."""
        if self._closed:
            raise trio.ClosedResourceError("this Router is closed")
        waiting = [runner for runner in self._runners if not runner._offer(records, self._sole)]
        for runner in waiting:
            await runner._put(records, self._sole)
        if not waiting:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close this feed's inputs; a runner drains and finishes once all its Routers are closed."""
        if not self._closed:
            self._closed = True
            for runner in self._runners:
                runner._detach_producer()
        await trio.lowlevel.checkpoint()
