"""Progress of a long backfill, for the log: blocks done of total, rate, ETA. Pure (the caller
passes the clock), so it is tested without waiting."""

from __future__ import annotations


class BackfillProgress:
    def __init__(self, first: int, last: int, now: float, interval_s: float) -> None:
        self.first = first
        self.last = last  # may move up while the backfill runs (the chain keeps growing)
        self.started = now
        self.interval_s = interval_s
        self._next_report = now + interval_s
        self.done_through = first - 1

    @property
    def total(self) -> int:
        return self.last - self.first + 1

    @property
    def done(self) -> int:
        return self.done_through - self.first + 1

    def advance(self, done_through: int, now: float) -> dict | None:
        """Record blocks done up to `done_through`; the fields of a progress line when one is due."""
        self.done_through = done_through
        if now < self._next_report:
            return None
        self._next_report = now + self.interval_s
        return self.fields(now)

    def fields(self, now: float) -> dict:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = max(0, self.last - self.done_through)
        return {
            "blocks_done": self.done,
            "blocks_total": self.total,
            "percent": round(100.0 * self.done / self.total, 1) if self.total > 0 else 100.0,
            "blocks_per_s": round(rate, 1),
            "eta_s": round(left / rate) if rate > 0 else None,
            "at_block": self.done_through,
        }
