"""Merge consecutive depthUpdate payloads into one, as Binance does for `@depth` (1000 ms) and
`@depth@100ms`: the merged event spans U of the first to u of the last, and each level carries its
latest quantity (a level deleted and not re-added stays in the diff with quantity "0").
"""

from __future__ import annotations

from typing import Any

Payload = dict[str, Any]


class DepthCoalescer:
    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self._first_update_id: int | None = None
        self._last_update_id = 0
        self._bids: dict[str, str] = {}
        self._asks: dict[str, str] = {}

    @property
    def pending(self) -> bool:
        return self._first_update_id is not None

    def add(self, update: Payload) -> None:
        if self._first_update_id is None:
            self._first_update_id = update["U"]
        elif update["U"] != self._last_update_id + 1:
            raise ValueError(f"depth updates for {self.symbol} are not contiguous")
        self._last_update_id = update["u"]
        for price, qty in update["b"]:
            self._bids[price] = qty
        for price, qty in update["a"]:
            self._asks[price] = qty

    def flush(self, now_ms: int) -> Payload | None:
        """The merged event (stamped now_ms), or None when nothing changed since the last flush."""
        if self._first_update_id is None:
            return None
        merged = {
            "e": "depthUpdate",
            "E": now_ms,
            "s": self.symbol,
            "U": self._first_update_id,
            "u": self._last_update_id,
            "b": [[price, qty] for price, qty in self._bids.items()],
            "a": [[price, qty] for price, qty in self._asks.items()],
        }
        self.reset()
        return merged

    def reset(self) -> None:
        self._first_update_id = None
        self._bids = {}
        self._asks = {}
