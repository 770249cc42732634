"""Per-symbol trade-id bookkeeping: de-duplication, gap detection and the resume watermark. No I/O.

Venues whose trade ids increase by exactly one per symbol (Binance `t` and `a`) let a consumer
prove completeness: a jump reveals missed trades, an id seen before is a duplicate (an overlapping
connection during make-before-break, or a REST backfill page that overlaps live data).

The watermark is the highest id W such that every trade <= W has been accepted. It is what a
restart resumes from, so it must never run ahead of a missing trade.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# results of TradeIdTracker.accept (truthy = keep the trade)
DUPLICATE = 0
ACCEPTED = 1
ACCEPTED_NEW_GAP = 2


@dataclass
class TradeIdTracker:
    #: next id expected from the live stream; None until the first trade (or a resume point)
    next_id: int | None = None
    #: missing ranges [lo, hi] (inclusive), sorted and disjoint
    gaps: list[list[int]] = field(default_factory=list)

    @classmethod
    def resuming_after(cls, last_id: int) -> "TradeIdTracker":
        return cls(next_id=last_id + 1)

    def accept(self, trade_id: int) -> int:
        """Record one trade id: ACCEPTED, ACCEPTED_NEW_GAP (ids were skipped) or DUPLICATE (drop it)."""
        nxt = self.next_id
        if nxt is None or trade_id == nxt:
            self.next_id = trade_id + 1
            return ACCEPTED
        if trade_id > nxt:
            self.gaps.append([nxt, trade_id - 1])
            self.next_id = trade_id + 1
            return ACCEPTED_NEW_GAP
        return ACCEPTED if self._fill(trade_id) else DUPLICATE

    def _gap_index(self, trade_id: int) -> int:
        """Index of the gap containing trade_id, or -1."""
        i = bisect.bisect_right(self.gaps, [trade_id, float("inf")]) - 1
        if i >= 0 and self.gaps[i][1] >= trade_id:
            return i
        return -1

    def _fill(self, trade_id: int) -> bool:
        gaps = self.gaps
        if not gaps:
            return False
        i = self._gap_index(trade_id)
        if i < 0:
            return False
        lo, hi = gaps[i]
        if lo == hi:
            del gaps[i]
        elif trade_id == lo:
            gaps[i][0] = lo + 1
        elif trade_id == hi:
            gaps[i][1] = hi - 1
        else:
            gaps[i:i + 1] = [[lo, trade_id - 1], [trade_id + 1, hi]]
        return True

    @property
    def watermark(self) -> int | None:
        """Highest id with nothing missing at or below it, or None if nothing is known yet."""
        if self.gaps:
            return self.gaps[0][0] - 1
        return None if self.next_id is None else self.next_id - 1

    def abandon(self, lo: int, hi: int) -> int:
        """Give up on ids lo..hi (the venue no longer has them). Returns how many were missing."""
        kept: list[list[int]] = []
        lost = 0
        for g_lo, g_hi in self.gaps:
            if g_hi < lo or g_lo > hi:
                kept.append([g_lo, g_hi])
                continue
            lost += min(g_hi, hi) - max(g_lo, lo) + 1
            if g_lo < lo:
                kept.append([g_lo, lo - 1])
            if g_hi > hi:
                kept.append([hi + 1, g_hi])
        self.gaps = kept
        return lost

    def first_gap(self) -> tuple[int, int] | None:
        return (self.gaps[0][0], self.gaps[0][1]) if self.gaps else None

    def missing_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.gaps)
