"""Count events in a sliding time window: "at most N per second" over ANY one-second span, which is
the strictest reading of Binance's 5-incoming-messages-per-second WebSocket limit."""

from __future__ import annotations

from collections import deque


class SlidingWindowCounter:
    def __init__(self, limit: int, window_s: float = 1.0) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("need limit >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Record one event at `now`; False when that makes more than `limit` within the window."""
        times = self._times
        while times and times[0] <= now - self.window_s:
            times.popleft()
        times.append(now)
        return len(times) <= self.limit
