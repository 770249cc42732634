"""Ground truth: every trade a symbol ever made, in compact parallel arrays.

A benchmark can create millions of trades, so a list of dicts (hundreds of bytes each) is out;
four typed arrays cost about 25 bytes a trade. Trade ids are contiguous, so the id is never stored:
trade number i has id `first_id + i`.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass


@dataclass(frozen=True)
class Trade:
    id: int
    price: int  # ticks
    qty: int  # lot steps
    time_ms: int
    buyer_is_maker: bool


class TradeLog:
    def __init__(self, first_id: int) -> None:
        self.first_id = first_id
        self._price = array("q")
        self._qty = array("q")
        self._time = array("q")
        self._maker = bytearray()

    def __len__(self) -> int:
        return len(self._price)

    @property
    def next_id(self) -> int:
        return self.first_id + len(self._price)

    @property
    def last_id(self) -> int | None:
        return self.next_id - 1 if self._price else None

    def append(self, price: int, qty: int, time_ms: int, buyer_is_maker: bool) -> int:
        trade_id = self.next_id
        self._price.append(price)
        self._qty.append(qty)
        self._time.append(time_ms)
        self._maker.append(buyer_is_maker)
        return trade_id

    def ids(self) -> range:
        return range(self.first_id, self.next_id)

    def get(self, trade_id: int) -> Trade:
        index = trade_id - self.first_id
        if not 0 <= index < len(self._price):
            raise KeyError(trade_id)
        return self._at(index)

    def page(self, from_id: int | None, limit: int) -> list[Trade]:
        """Up to `limit` trades starting at `from_id` (inclusive), or the most recent `limit` if None.

        Like Binance, a `from_id` older than the oldest trade starts at the oldest one.
        """
        if limit <= 0:
            return []
        if from_id is None:
            start = max(0, len(self._price) - limit)
        else:
            start = max(0, from_id - self.first_id)
        stop = min(len(self._price), start + limit)
        return [self._at(i) for i in range(start, stop)]

    def page_by_time(self, start_ms: int | None, end_ms: int | None, limit: int) -> list[Trade]:
        """Up to `limit` oldest trades with start_ms <= time <= end_ms (both inclusive, both optional)."""
        start = 0 if start_ms is None else bisect.bisect_left(self._time, start_ms)
        stop = len(self._time) if end_ms is None else bisect.bisect_right(self._time, end_ms)
        stop = min(stop, start + max(0, limit))
        return [self._at(i) for i in range(start, stop)]

    def _at(self, index: int) -> Trade:
        return Trade(
            self.first_id + index,
            self._price[index],
            self._qty[index],
            self._time[index],
            bool(self._maker[index]),
        )
