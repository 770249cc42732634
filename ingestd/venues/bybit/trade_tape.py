"""One contract's trade bookkeeping: exact de-duplication, gaps, REST catch-up and the resume point.

Bybit trade ids are opaque strings with no order, so a gap cannot be seen in the ids; it is known
from the transport instead (a lost connection, a frame that could not be decoded, a restart). A gap
is opened at the time of the last trade emitted before it; the catch-up, a REST page of the most
recent trades requested once the live stream is back, fills it with every trade at or after that
time not already seen. Trades are de-duplicated by their full venue id (exactly), within a window
of recent ids comfortably larger than a REST page; the sink's natural key is the last word.

The resume point (a Checkpoint's `trade_id`) is a venue time in ms: every trade before it has been
emitted. While a gap is open it stays at the gap's start, so a restart refetches from there.
"""

from __future__ import annotations

from collections import deque

from ingestd.model import Trade
from ingestd.venues.bybit.protocol import VENUE, VenueTrade, trade_id_of

SEEN_WINDOW = 5000  # ids remembered per contract; a REST page holds at most 1000


class TradeTape:
    def __init__(self, symbol: str, *, resume_ms: int | None = None) -> None:
        self.symbol = symbol
        self.last_ms: int | None = None  # newest trade time emitted
        self.gap_from_ms: int | None = None  # trades at or after this time may be missing
        self.gap_generation = 0  # bumped by every gap, so a catch-up knows if it still covers the latest
        self.id_collisions = 0
        self._seen: dict[str, int] = {}  # venue id -> trade_id, insertion ordered
        self._owner: dict[int, str] = {}  # trade_id -> venue id, for collision checks
        self._order: deque[str] = deque()
        if resume_ms is not None:
            self.open_gap(resume_ms)

    @property
    def resume_point(self) -> int | None:
        return self.gap_from_ms if self.gap_from_ms is not None else self.last_ms

    def open_gap(self, since_ms: int | None = None) -> bool:
        """Trades may have been missed from the last one emitted on. False when there is nothing to
        catch up from (no trade seen yet and no resume point)."""
        start = since_ms if since_ms is not None else self.last_ms
        if self.gap_from_ms is None:
            self.gap_from_ms = start
        elif start is not None:
            self.gap_from_ms = min(self.gap_from_ms, start)
        self.gap_generation += 1
        return self.gap_from_ms is not None

    def accept_live(self, trades: list[VenueTrade], recv_us: int) -> list[Trade]:
        return [self._emit(t, recv_us) for t in trades if t.venue_id not in self._seen]

    def apply_catchup(self, page: list[VenueTrade], generation: int, *, full: bool, recv_us: int) -> tuple[list[Trade], bool]:
        """Fill the open gap from a REST page (any order) fetched when the gap's generation was
        `generation`. Returns (trades not seen before, whether some may be lost for good: the page
        was full and all of it is newer than the gap's start)."""
        start = self.gap_from_ms
        if start is None:
            return [], False
        out = []
        for t in sorted(page, key=lambda t: t.ts_ms):
            if t.ts_ms >= start and t.venue_id not in self._seen:
                out.append(self._emit(t, recv_us))
        lost = full and bool(page) and min(t.ts_ms for t in page) > start
        if generation == self.gap_generation:
            self.gap_from_ms = None  # the page was requested after the latest gap opened: closed
        return out, lost

    def _emit(self, t: VenueTrade, recv_us: int) -> Trade:
        trade_id = trade_id_of(t.venue_id)
        owner = self._owner.get(trade_id)
        if owner is not None and owner != t.venue_id:
            self.id_collisions += 1
        self._seen[t.venue_id] = trade_id
        self._owner[trade_id] = t.venue_id
        self._order.append(t.venue_id)
        if len(self._order) > SEEN_WINDOW:
            old = self._order.popleft()
            old_id = self._seen.pop(old)
            if self._owner.get(old_id) == old:
                del self._owner[old_id]
        if self.last_ms is None or t.ts_ms > self.last_ms:
            self.last_ms = t.ts_ms
        return Trade(VENUE, self.symbol, trade_id, t.price, t.qty, t.side, t.ts_ms * 1000, recv_us)
