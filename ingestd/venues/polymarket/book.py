"""The local order book of one outcome token, kept from `book` snapshots and `price_change` levels.

The market channel has no sequence numbers, so a lost message cannot be detected by counting.
What the venue does give is its best bid and ask after every level change; a book whose best
prices disagree with those is out of step and must be replaced by a fresh `book` (the feed
resubscribes the asset). Until then it is not `live` and is not published.
"""

from __future__ import annotations

_EPSILON = 1e-9


class LocalBook:
    __slots__ = ("asset_id", "market", "bids", "asks", "hash", "ts_ms", "live")

    def __init__(self, asset_id: str) -> None:
        self.asset_id = asset_id
        self.market = ""  # condition id, known from the first book
        self.bids: dict[float, float] = {}  # price -> size
        self.asks: dict[float, float] = {}
        self.hash = ""
        self.ts_ms = 0
        self.live = False  # a snapshot arrived since the last reconnect or mismatch

    def apply_snapshot(self, market: str, bids, asks, book_hash: str, ts_ms: int) -> None:
        self.market = market or self.market
        self.bids = {p: s for p, s in bids if s > 0}
        self.asks = {p: s for p, s in asks if s > 0}
        self.hash = book_hash
        self.ts_ms = ts_ms
        self.live = True

    def apply_change(self, price: float, size: float, is_bid: bool, book_hash: str, ts_ms: int) -> None:
        side = self.bids if is_bid else self.asks
        if size > 0:
            side[price] = size
        else:
            side.pop(price, None)
        if book_hash:
            self.hash = book_hash
        self.ts_ms = max(self.ts_ms, ts_ms)

    def best_bid(self) -> float | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> float | None:
        return min(self.asks) if self.asks else None

    def agrees_with(self, best_bid: float | None, best_ask: float | None) -> bool:
        """Whether the venue's reported best prices match ours. An empty side may be reported as
        missing, 0, or (asks) 1, the bounds of the price range."""
        return (_same(self.best_bid(), best_bid, empty=(0.0,))
                and _same(self.best_ask(), best_ask, empty=(0.0, 1.0)))

    def invalidate(self) -> None:
        self.live = False

    def top(self, levels: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Best first, at most `levels` per side."""
        bids = sorted(self.bids.items(), key=lambda kv: -kv[0])[:levels]
        asks = sorted(self.asks.items())[:levels]
        return bids, asks


def _same(ours: float | None, theirs: float | None, *, empty: tuple[float, ...]) -> bool:
    if theirs is None:
        return True  # not reported: nothing to check
    if ours is None:
        return any(abs(theirs - e) < _EPSILON for e in empty)
    return abs(ours - theirs) < _EPSILON
