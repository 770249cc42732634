"""The simulated Polymarket: binary markets, an order book per outcome token, trades by a crowd of
wallets and a few whales. Pure and deterministic: the same seed and the same sequence of `step`
calls make the same markets, books, trades and transaction hashes.

Prices are integer ticks of 0.01 (1..99) and sizes integer hundredths of a share, so the books
do exact arithmetic and the decimal strings on the wire parse back to exactly the floats the
ground truth holds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

TICKS = 100  # prices are ticks / 100, strictly between 0 and 1
MIN_LEVELS = 3


def price_text(tick: int, *, bare: bool = False) -> str:
    """ "0.53", or ".53" as some of the venue's book messages spell it."""
    text = f"{tick / TICKS:.2f}"
    return text[1:] if bare and text.startswith("0.") else text


def size_text(hundredths: int) -> str:
    return f"{hundredths // 100}.{hundredths % 100:02d}"


def price_of(tick: int) -> float:
    return float(price_text(tick))


def size_of(hundredths: int) -> float:
    return float(size_text(hundredths))


@dataclass
class Outcome:
    asset_id: str
    condition_id: str
    name: str  # "Yes" / "No"
    index: int
    bids: dict[int, int] = field(default_factory=dict)  # tick -> size in hundredths
    asks: dict[int, int] = field(default_factory=dict)
    bare_prices: bool = False  # this token's book messages write ".53"
    ts_ms: int = 0

    def best_bid(self) -> int | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> int | None:
        return min(self.asks) if self.asks else None

    def hash(self) -> str:
        text = f"{self.asset_id}|{sorted(self.bids.items())}|{sorted(self.asks.items())}"
        return hashlib.sha1(text.encode()).hexdigest()

    def levels(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Best first, as floats: what a consumer's book should hold."""
        bids = [(price_of(t), size_of(s)) for t, s in sorted(self.bids.items(), reverse=True)]
        asks = [(price_of(t), size_of(s)) for t, s in sorted(self.asks.items())]
        return bids, asks


@dataclass
class Market:
    condition_id: str
    title: str
    slug: str
    outcomes: list[Outcome]


@dataclass(frozen=True)
class Wallet:
    address: str
    pseudonym: str
    is_whale: bool


@dataclass(frozen=True)
class Trade:
    seq: int
    asset_id: str
    condition_id: str
    tx_hash: str
    tick: int
    size: int  # hundredths
    side: str  # the taker's side, "BUY" or "SELL"
    ts_ms: int
    taker: Wallet
    outcome: str
    outcome_index: int
    title: str
    slug: str

    @property
    def price(self) -> float:
        return price_of(self.tick)

    @property
    def shares(self) -> float:
        return size_of(self.size)


@dataclass(frozen=True)
class LevelChange:
    outcome: Outcome
    tick: int
    size: int  # the new total
    is_bid: bool


@dataclass(frozen=True)
class BookChanged:
    market: Market
    change: LevelChange
    ts_ms: int


@dataclass(frozen=True)
class Traded:
    trade: Trade
    outcome: Outcome  # its book after the trade


class PolyMarket:
    def __init__(self, seed: int, *, markets: int = 4, whales: int = 3, crowd: int = 40,
                 whale_share: float = 0.2, trade_ratio: float = 0.3) -> None:
        self.rng = random.Random(f"polymarket/{seed}")
        self.whale_share = whale_share
        self.trade_ratio = trade_ratio
        self.markets: list[Market] = []
        self.outcomes: dict[str, Outcome] = {}
        for m in range(markets):
            condition = "0x" + self._hex(64)
            title = f"Will simulated event #{m + 1} happen?"
            market = Market(condition, title, f"simulated-event-{m + 1}", [])
            for index, name in enumerate(("Yes", "No")):
                outcome = Outcome(str(self.rng.getrandbits(250)), condition, name, index,
                                  bare_prices=(m % 2 == 1))
                self._seed_book(outcome)
                market.outcomes.append(outcome)
                self.outcomes[outcome.asset_id] = outcome
            self.markets.append(market)
        self.whales = [Wallet("0x" + self._hex(40), f"Whale-{i + 1}", True) for i in range(whales)]
        self.crowd = [Wallet("0x" + self._hex(40), f"trader-{i + 1}", False) for i in range(crowd)]
        self.trades: list[Trade] = []
        self._market_of = {o.asset_id: m for m in self.markets for o in m.outcomes}

    def _hex(self, digits: int) -> str:
        return f"{self.rng.getrandbits(4 * digits):0{digits}x}"

    def _seed_book(self, outcome: Outcome) -> None:
        mid = self.rng.randint(20, 80)
        for k in range(1, self.rng.randint(4, 9)):
            outcome.bids[mid - k] = self.rng.randint(500, 50_000)
        for k in range(1, self.rng.randint(4, 9)):
            outcome.asks[mid + k] = self.rng.randint(500, 50_000)

    def market_of(self, asset_id: str) -> Market:
        return self._market_of[asset_id]

    # --- the market moving ---------------------------------------------------------------------

    def step(self, now_ms: int) -> BookChanged | Traded | None:
        market = self.rng.choice(self.markets)
        outcome = self.rng.choice(market.outcomes)
        outcome.ts_ms = now_ms
        if self.rng.random() < self.trade_ratio:
            return self._trade(market, outcome, now_ms)
        return BookChanged(market, self._order(outcome), now_ms)

    def _order(self, o: Outcome) -> LevelChange:
        is_bid = self.rng.random() < 0.5
        side = o.bids if is_bid else o.asks
        best_bid, best_ask = o.best_bid() or 0, o.best_ask() or TICKS
        if is_bid:
            low, high = max(1, best_bid - 5), min(best_ask - 1, best_bid + 1)
        else:
            low, high = max(best_ask - 1, best_bid + 1), min(TICKS - 1, best_ask + 5)
        tick = self.rng.randint(low, max(low, high))
        if (is_bid and tick >= best_ask) or (not is_bid and tick <= best_bid):
            tick = best_bid if is_bid else best_ask  # no room inside the spread: join the touch
        tick = min(TICKS - 1, max(1, tick))
        current = side.get(tick, 0)
        if current and self.rng.random() < 0.4 and len(side) > MIN_LEVELS:
            new = 0 if current <= 200 or self.rng.random() < 0.3 else current - self.rng.randint(100, current - 100)
        else:
            new = current + self.rng.randint(100, 20_000)
        if new:
            side[tick] = new
        else:
            side.pop(tick, None)
        return LevelChange(o, tick, new, is_bid)

    def _trade(self, market: Market, o: Outcome, now_ms: int) -> Traded | None:
        side = "BUY" if self.rng.random() < 0.5 else "SELL"
        book = o.asks if side == "BUY" else o.bids
        if not book:
            return None
        tick = min(book) if side == "BUY" else max(book)
        size = min(book[tick], self.rng.randint(100, 30_000))
        if book[tick] - size <= 0:
            del book[tick]
        else:
            book[tick] -= size
        if len(book) < MIN_LEVELS:  # market makers come back
            far = (max(book) + 1 if book else tick + 1) if side == "BUY" else (min(book) - 1 if book else tick - 1)
            if 0 < far < TICKS:
                book[far] = self.rng.randint(500, 50_000)
        whale = self.whales and self.rng.random() < self.whale_share
        taker = self.rng.choice(self.whales) if whale else self.rng.choice(self.crowd)
        trade = Trade(len(self.trades) + 1, o.asset_id, market.condition_id, "0x" + self._hex(64), tick, size,
                      side, now_ms, taker, o.name, o.index, market.title, market.slug)
        self.trades.append(trade)
        return Traded(trade, o)
