"""One contract's derivative state, merged from Bybit's ticker snapshot and deltas, and the rows it yields.

Rows (model.Derivative) are all stamped with venue time:
- on change: at the `ts` of every message after which a stored field differs from before it (the
  first snapshot after (re)synchronising counts as a change when it differs from what was known);
- samples: at every multiple G of the sample interval, the state as of G, i.e. after the last
  message with ts <= G. A sample is written when the first message with ts > G arrives or, for a
  quiet contract, once its connection has carried venue time G + grace (`sample_until`).

Only a book in sync writes rows: after a gap (a lost connection, a bad frame) deltas are ignored
until a snapshot arrives, and grid points inside the gap are skipped, never guessed. So every row
equals the venue's state as of its timestamp, which is what the acceptance test checks.
"""

from __future__ import annotations

from ingestd.model import Derivative
from ingestd.venues.bybit.protocol import STATE_KEYS, VENUE, TickerUpdate

MAX_SAMPLES_AT_ONCE = 10_000  # after a long quiet spell, older grid points are skipped, not all written


def ceil_to_grid(ts_ms: int, interval_ms: int) -> int:
    return -(-ts_ms // interval_ms) * interval_ms


class TickerBook:
    def __init__(self, symbol: str, *, interval_ms: int, on_change: bool) -> None:
        self.symbol = symbol
        self.interval_ms = interval_ms
        self.on_change = on_change
        self.synced = False
        self.values: dict[str, float | int | None] | None = None  # None until a first snapshot
        self.ts_ms = -1  # venue time of the state
        self.next_sample_ms: int | None = None
        self.last_row_ms = -1  # rows go out in increasing ts, so one key is never written twice
        self.stale_rows = 0  # rows withheld because their ts was not after the last one written

    def desync(self) -> None:
        """Deltas may have been lost: ignore them until the next snapshot."""
        self.synced = False

    def apply(self, update: TickerUpdate, recv_us: int) -> list[Derivative] | None:
        """Merge one message; the rows it completes, or None when a delta was ignored (not in sync)."""
        rows: list[Derivative] = []
        ts = update.ts_ms
        if update.snapshot:
            before = self._state()
            if self.synced:
                # A snapshot on a live subscription (the venue may send one at any time): the state
                # it replaces held until now, so earlier grid points are known.
                self._samples_before(ts, recv_us, rows)
            self.values = {key: update.values.get(key) for key in STATE_KEYS}
            if not self.synced and self.interval_ms:
                first = ceil_to_grid(ts, self.interval_ms)
                self.next_sample_ms = first if self.next_sample_ms is None else max(self.next_sample_ms, first)
            self.synced = True
        else:
            if not self.synced or self.values is None:
                return None
            self._samples_before(ts, recv_us, rows)
            before = self._state()
            self.values.update(update.values)
        self.ts_ms = max(self.ts_ms, ts)
        changed = self._state() != before
        if changed and self.on_change:
            self._add_row(ts, recv_us, rows)
        if self.interval_ms and self.next_sample_ms == ts:
            if not (changed and self.on_change):
                self._add_row(ts, recv_us, rows)
            self.next_sample_ms += self.interval_ms
        return rows

    def sample_until(self, venue_ms: int, recv_us: int) -> list[Derivative]:
        """Samples at grid points <= venue_ms: called once the connection has moved past them."""
        rows: list[Derivative] = []
        if self.synced and self.interval_ms and self.next_sample_ms is not None:
            self._samples_before(venue_ms + 1, recv_us, rows)
        return rows

    def _samples_before(self, ts_ms: int, recv_us: int, rows: list[Derivative]) -> None:
        """Grid points before ts_ms carry the current state (nothing happened between)."""
        step = self.interval_ms
        if not step or self.next_sample_ms is None or self.next_sample_ms >= ts_ms:
            return
        g = max(self.next_sample_ms, ceil_to_grid(ts_ms - MAX_SAMPLES_AT_ONCE * step, step))
        while g < ts_ms:
            self._add_row(g, recv_us, rows)
            g += step
        self.next_sample_ms = g

    def _state(self) -> tuple | None:
        values = self.values
        return None if values is None else tuple(values[key] for key in STATE_KEYS)

    def _add_row(self, ts_ms: int, recv_us: int, rows: list[Derivative]) -> None:
        if ts_ms <= self.last_row_ms:
            self.stale_rows += 1
            return
        self.last_row_ms = ts_ms
        rows.append(self.row(ts_ms, recv_us))

    def row(self, ts_ms: int, recv_us: int) -> Derivative:
        v = self.values
        assert v is not None
        mark, index, basis = v["mark_price"], v["index_price"], v["venue_basis"]
        if basis is None and mark is not None and index is not None:
            basis = mark - index
        return Derivative(
            VENUE, self.symbol, ts_ms * 1000, recv_us,
            funding_rate=v["funding_rate"], next_funding_us=v["next_funding_us"],
            open_interest=v["open_interest"], open_interest_value=v["open_interest_value"],
            mark_price=mark, index_price=index, basis=basis,
        )
