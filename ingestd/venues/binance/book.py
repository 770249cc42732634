"""A local Binance Spot order book kept by the documented snapshot + diff procedure. No I/O.

The procedure (binance-spot-api-docs, web-socket-streams.md, "How to manage a local order book"):
1. buffer diff events from the stream, noting the first event's U;
2. fetch a REST depth snapshot; if its lastUpdateId is older than the first buffered U, fetch again;
3. drop buffered events with u <= lastUpdateId;
4. then for every event: u < local id -> ignore; U > local id + 1 -> events were missed: discard the
   book and start again at 1; otherwise apply (quantity 0 deletes the level) and set local id = u.

The caller owns the I/O: when `needs_snapshot` is true it fetches one and hands it to
`apply_snapshot`. A gap resets only this book, so one symbol resyncing never stalls the others.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from ingestd.venues.binance.protocol import DepthEvent

SYNCING = "syncing"
LIVE = "live"


@dataclass
class DepthSnapshot:
    last_update_id: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


@dataclass
class LocalBook:
    symbol: str
    max_buffer: int = 2000  # diffs buffered while waiting for a snapshot; beyond it, start over
    state: str = SYNCING
    last_update_id: int = 0
    last_event_ms: int = 0
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    resyncs: int = 0
    _buffer: list[DepthEvent] = field(default_factory=list)

    @property
    def needs_snapshot(self) -> bool:
        """True while syncing and at least one diff has been buffered (step 1 done)."""
        return self.state == SYNCING and bool(self._buffer)

    def on_diff(self, ev: DepthEvent) -> bool:
        """Feed one diff event. Returns True when it changed the live book."""
        if self.state == SYNCING:
            if len(self._buffer) >= self.max_buffer:
                # The snapshot is taking too long; the oldest diffs are useless now anyway.
                self._buffer.clear()
            self._buffer.append(ev)
            return False
        if ev.u <= self.last_update_id:
            return False  # already applied (for example, from an overlapping connection)
        if ev.U > self.last_update_id + 1:
            self._resync(ev)
            return False
        self._apply(ev)
        return True

    def apply_snapshot(self, snap: DepthSnapshot) -> bool:
        """Install a REST snapshot. Returns False when it is too old and another one is needed."""
        if self.state != SYNCING:
            return True
        if self._buffer and snap.last_update_id < self._buffer[0].U - 1:
            return False  # step 2: snapshot predates what we buffered; keep the buffer, fetch again
        self.bids = {p: q for p, q in snap.bids if q > 0}
        self.asks = {p: q for p, q in snap.asks if q > 0}
        self.last_update_id = snap.last_update_id
        self.state = LIVE
        buffered, self._buffer = self._buffer, []
        for ev in buffered:  # step 3 and 4; a gap inside the buffer restarts the procedure
            self.on_diff(ev)
        return True

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Best n bids (highest first) and asks (lowest first)."""
        bid_px = heapq.nlargest(n, self.bids)
        ask_px = heapq.nsmallest(n, self.asks)
        return [(p, self.bids[p]) for p in bid_px], [(p, self.asks[p]) for p in ask_px]

    def _apply(self, ev: DepthEvent) -> None:
        bids, asks = self.bids, self.asks
        for p, q in ev.b:
            if q == 0.0:
                bids.pop(p, None)
            else:
                bids[p] = q
        for p, q in ev.a:
            if q == 0.0:
                asks.pop(p, None)
            else:
                asks[p] = q
        self.last_update_id = ev.u
        self.last_event_ms = ev.E

    def _resync(self, first: DepthEvent) -> None:
        self.state = SYNCING
        self.resyncs += 1
        self.bids = {}
        self.asks = {}
        self._buffer = [first]
