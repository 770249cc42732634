"""A price-level order book keyed by integer ticks, with each side's prices kept sorted.

Sorted price lists (maintained with bisect) make best price, top-N and full snapshots cheap, which
matters because the market model touches the top of the book on every depth step.
"""

from __future__ import annotations

import bisect

BID = "b"
ASK = "a"


class OrderBook:
    def __init__(self) -> None:
        self._qty: dict[str, dict[int, int]] = {BID: {}, ASK: {}}
        # Both lists ascending: the best bid is the last bid price, the best ask the first ask price.
        self._prices: dict[str, list[int]] = {BID: [], ASK: []}

    def size(self, side: str) -> int:
        return len(self._prices[side])

    def qty(self, side: str, price: int) -> int:
        return self._qty[side].get(price, 0)

    def set(self, side: str, price: int, qty: int) -> None:
        """Set a level's quantity; 0 deletes the level (the depth-stream convention)."""
        levels = self._qty[side]
        prices = self._prices[side]
        if qty == 0:
            if levels.pop(price, None) is not None:
                del prices[bisect.bisect_left(prices, price)]
            return
        if price not in levels:
            bisect.insort(prices, price)
        levels[price] = qty

    def best(self, side: str) -> int | None:
        prices = self._prices[side]
        if not prices:
            return None
        return prices[-1] if side == BID else prices[0]

    def worst(self, side: str) -> int | None:
        prices = self._prices[side]
        if not prices:
            return None
        return prices[0] if side == BID else prices[-1]

    def nth_best(self, side: str, rank: int) -> int:
        """The price `rank` levels away from the best (0 = best)."""
        prices = self._prices[side]
        return prices[-1 - rank] if side == BID else prices[rank]

    def top_prices(self, side: str, count: int | None = None) -> list[int]:
        """Prices best first; all of them when count is None."""
        prices = self._prices[side]
        if side == BID:
            chosen = prices if count is None else prices[-count:] if count > 0 else []
            return chosen[::-1]
        return list(prices if count is None else prices[:count])

    def levels(self, side: str, count: int | None = None) -> list[tuple[int, int]]:
        levels = self._qty[side]
        return [(price, levels[price]) for price in self.top_prices(side, count)]
