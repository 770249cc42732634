"""Deterministic, seeded market model for the Binance simulator (sans-I/O: no sockets, no clocks).

Per symbol it keeps a reference order book, a depth update-id counter and the ground-truth trade log,
and it produces Binance Spot payloads (`trade`, `depthUpdate`) and REST views (depth snapshots,
historical trades, aggregate trades) from that state. Callers pass the time in; the model never reads
a clock, so the same seed and the same calls give byte-identical output.

Each symbol has its own `random.Random` derived from (seed, symbol), so a symbol's history does not
depend on how events of different symbols are interleaved; a separate schedule RNG picks which symbol
and which kind of event comes next in `step()`.

Simplifications, on purpose:
- Trades print at the current best bid (buyer is maker) or best ask, but do not consume book liquidity;
  the book evolves only through depth steps. The price random walk comes from those depth steps.
- Every trade is its own aggregate trade: aggTrade `a`, `f` and `l` all equal the trade id.
- Each depth step changes k distinct levels and advances the update id by exactly k.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ingestd.sim.fixed_point import render
from ingestd.sim.instruments import Instrument, instrument_for
from ingestd.sim.order_book import ASK, BID, OrderBook
from ingestd.sim.trade_log import Trade, TradeLog

Payload = dict[str, Any]

# Depth steps mostly touch the top of the book, like real order flow, so the best prices keep moving.
_TOP_RANKS = 10
_TOP_BIAS = 0.7
# Share of level additions placed inside the spread; this is what lets the price walk both ways.
_INSIDE_SPREAD_SHARE = 0.3


@dataclass(frozen=True)
class MarketEvent:
    kind: str  # "trade" or "depth"
    symbol: str
    payload: Payload


class _SymbolState:
    def __init__(self, instrument: Instrument, rng: random.Random, min_levels: int, max_levels: int) -> None:
        self.instrument = instrument
        self.rng = rng
        self.book = OrderBook()
        self.update_id = 1_000_000_000 + rng.randrange(1_000_000_000)
        self.trades = TradeLog(first_id=1_000_000 + rng.randrange(100_000_000))
        self.depth_updates = 0
        self._seed_book(min_levels, max_levels)

    def _seed_book(self, min_levels: int, max_levels: int) -> None:
        rng, start = self.rng, self.instrument.start_price
        half_spread = rng.randint(1, 3)
        count = rng.randint(min_levels, max(min_levels, (min_levels + max_levels) // 2))
        for side, best, direction in ((BID, start - half_spread, -1), (ASK, start + half_spread, 1)):
            price = best
            for _ in range(count):
                if price <= 0:
                    break
                self.book.set(side, price, random_book_qty(rng))
                price += direction * rng.randint(1, 3)

    def price_text(self, ticks: int) -> str:
        return render(ticks, self.instrument.price_decimals)

    def qty_text(self, lots: int) -> str:
        return render(lots, self.instrument.qty_decimals)


def random_book_qty(rng: random.Random) -> int:
    """A resting quantity in lot steps, log-uniform between 0.0001 and ~3 units."""
    return int(10 ** rng.uniform(1, 5.5))


def random_trade_qty(rng: random.Random) -> int:
    return int(10 ** rng.uniform(1, 5))


def agg_trade_from_trade(trade: Payload) -> Payload:
    """The `aggTrade` stream payload for a trade payload: each trade is its own aggregate."""
    trade_id = trade["t"]
    return {
        "e": "aggTrade",
        "E": trade["E"],
        "s": trade["s"],
        "a": trade_id,
        "p": trade["p"],
        "q": trade["q"],
        "f": trade_id,
        "l": trade_id,
        "T": trade["T"],
        "m": trade["m"],
        "M": True,
    }


class Market:
    def __init__(
        self,
        symbols: Sequence[str],
        seed: int,
        *,
        depth_ratio: float = 0.5,
        min_levels: int = 20,
        max_levels: int = 100,
        halted: Collection[str] = (),
    ) -> None:
        if not symbols:
            raise ValueError("a market needs at least one symbol")
        if len(set(symbols)) != len(symbols):
            raise ValueError("duplicate symbols")
        if not 0.0 <= depth_ratio <= 1.0:
            raise ValueError("depth_ratio must be within [0, 1]")
        if not 1 <= min_levels <= max_levels:
            raise ValueError("need 1 <= min_levels <= max_levels")
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.seed = seed
        self.depth_ratio = depth_ratio
        self.min_levels = min_levels
        self.max_levels = max_levels
        self._states = {
            symbol: _SymbolState(instrument_for(symbol), random.Random(f"{seed}/{symbol}"), min_levels, max_levels)
            for symbol in symbols
        }
        # Halted symbols keep their book and history (REST still serves them) but produce no events.
        self.active_symbols: tuple[str, ...] = tuple(s for s in symbols if s not in set(halted))
        self._schedule = random.Random(f"{seed}/schedule")

    # ----- event generation -------------------------------------------------------------------

    def pick_symbol(self) -> str | None:
        if not self.active_symbols:
            return None
        return self._schedule.choice(self.active_symbols)

    def step(self, now_ms: int) -> MarketEvent | None:
        """One event for a scheduled symbol: a depth step with probability depth_ratio, else a trade."""
        symbol = self.pick_symbol()
        if symbol is None:
            return None
        if self._schedule.random() < self.depth_ratio:
            return MarketEvent("depth", symbol, self.step_depth(symbol, now_ms))
        return MarketEvent("trade", symbol, self.step_trade(symbol, now_ms))

    def step_trade(self, symbol: str, now_ms: int) -> Payload:
        state = self._states[symbol]
        rng = state.rng
        buyer_is_maker = rng.random() < 0.5
        # A maker buyer means the taker sold into the best bid; otherwise the taker lifted the best ask.
        price = state.book.best(BID if buyer_is_maker else ASK)
        assert price is not None
        qty = random_trade_qty(rng)
        trade_id = state.trades.append(price, qty, now_ms, buyer_is_maker)
        return {
            "e": "trade",
            "E": now_ms,
            "s": symbol,
            "t": trade_id,
            "p": state.price_text(price),
            "q": state.qty_text(qty),
            "T": now_ms,
            "m": buyer_is_maker,
            "M": True,
        }

    def step_depth(self, symbol: str, now_ms: int) -> Payload:
        state = self._states[symbol]
        rng, book = state.rng, state.book
        changes: dict[tuple[str, int], int] = {}
        for _ in range(rng.randint(1, 4)):
            side = BID if rng.random() < 0.5 else ASK
            price, qty = self._mutation(state, side)
            book.set(side, price, qty)
            changes[(side, price)] = qty
        first = state.update_id + 1
        state.update_id += len(changes)
        state.depth_updates += 1
        bids = [[state.price_text(p), state.qty_text(q)] for (side, p), q in changes.items() if side == BID]
        asks = [[state.price_text(p), state.qty_text(q)] for (side, p), q in changes.items() if side == ASK]
        return {"e": "depthUpdate", "E": now_ms, "s": symbol, "U": first, "u": state.update_id, "b": bids, "a": asks}

    def _mutation(self, state: _SymbolState, side: str) -> tuple[int, int]:
        """Choose one level change (price, new qty; 0 deletes) that keeps both sides within bounds."""
        rng, book = state.rng, state.book
        size = book.size(side)
        if size >= self.max_levels:
            worst = book.worst(side)
            assert worst is not None
            return worst, 0
        # Lean towards adding below the middle of the size band and deleting above it, so each side
        # hovers around (min_levels + max_levels) / 2 instead of collapsing onto a bound.
        delete_share = 0.2 if size < (self.min_levels + self.max_levels) // 2 else 0.3
        roll = rng.random()
        if size > self.min_levels and roll >= 1.0 - delete_share:
            return self._pick_level(state, side), 0
        if roll >= 0.5 or size <= self.min_levels:
            for _ in range(3):  # the book is dense near the top, so a random price often exists already
                added = self._new_level_price(state, side)
                if added is not None:
                    return added, random_book_qty(rng)
        price = self._pick_level(state, side)
        qty = random_book_qty(rng)
        if qty == book.qty(side, price):
            qty += 1  # a "change" that changes nothing would be a wasted update id
        return price, qty

    def _pick_level(self, state: _SymbolState, side: str) -> int:
        rng, size = state.rng, state.book.size(side)
        if rng.random() < _TOP_BIAS:
            rank = rng.randrange(min(_TOP_RANKS, size))
        else:
            rank = rng.randrange(size)
        return state.book.nth_best(side, rank)

    def _new_level_price(self, state: _SymbolState, side: str) -> int | None:
        """A price with no level yet that keeps best bid < best ask, or None if the pick collides."""
        rng, book = state.rng, state.book
        best_bid, best_ask = book.best(BID), book.best(ASK)
        assert best_bid is not None and best_ask is not None
        if best_ask - best_bid > 1 and rng.random() < _INSIDE_SPREAD_SHARE:
            price = rng.randint(best_bid + 1, best_ask - 1)
        else:
            reach = rng.randint(1, 2 * book.size(side) + 5)
            price = best_bid - reach if side == BID else best_ask + reach
        if price <= 0 or book.qty(side, price):
            return None
        return price

    # ----- REST views ------------------------------------------------------------------------

    def instrument(self, symbol: str) -> Instrument:
        return self._states[symbol].instrument

    def last_update_id(self, symbol: str) -> int:
        return self._states[symbol].update_id

    def depth_snapshot(self, symbol: str, limit: int | None = 100) -> Payload:
        """`GET /api/v3/depth` body; limit None gives the whole book (it never exceeds max_levels a side)."""
        state = self._states[symbol]
        return {
            "lastUpdateId": state.update_id,
            "bids": [[state.price_text(p), state.qty_text(q)] for p, q in state.book.levels(BID, limit)],
            "asks": [[state.price_text(p), state.qty_text(q)] for p, q in state.book.levels(ASK, limit)],
        }

    def historical_trades(self, symbol: str, from_id: int | None = None, limit: int = 500) -> list[Payload]:
        """`GET /api/v3/historicalTrades` (and `/trades` with from_id None) body."""
        state = self._states[symbol]
        return [self._trade_view(state, trade) for trade in state.trades.page(from_id, limit)]

    def agg_trades(
        self,
        symbol: str,
        from_id: int | None = None,
        limit: int = 500,
        *,
        start_time: int | None = None,
        end_time: int | None = None,
    ) -> list[Payload]:
        """`GET /api/v3/aggTrades` body. fromId wins over a time range, as on Binance."""
        state = self._states[symbol]
        if from_id is None and (start_time is not None or end_time is not None):
            trades = state.trades.page_by_time(start_time, end_time, limit)
        else:
            trades = state.trades.page(from_id, limit)
        return [self._agg_view(state, trade) for trade in trades]

    @staticmethod
    def _trade_view(state: _SymbolState, trade: Trade) -> Payload:
        quote_decimals = state.instrument.price_decimals + state.instrument.qty_decimals
        return {
            "id": trade.id,
            "price": state.price_text(trade.price),
            "qty": state.qty_text(trade.qty),
            "quoteQty": render(trade.price * trade.qty, quote_decimals),
            "time": trade.time_ms,
            "isBuyerMaker": trade.buyer_is_maker,
            "isBestMatch": True,
        }

    @staticmethod
    def _agg_view(state: _SymbolState, trade: Trade) -> Payload:
        return {
            "a": trade.id,
            "p": state.price_text(trade.price),
            "q": state.qty_text(trade.qty),
            "f": trade.id,
            "l": trade.id,
            "T": trade.time_ms,
            "m": trade.buyer_is_maker,
            "M": True,
        }

    # ----- ground truth ----------------------------------------------------------------------

    def trade_log(self, symbol: str) -> TradeLog:
        return self._states[symbol].trades

    def trade_ids(self, symbol: str) -> range:
        return self._states[symbol].trades.ids()

    def trade_count(self) -> int:
        return sum(len(state.trades) for state in self._states.values())

    def depth_update_count(self) -> int:
        return sum(state.depth_updates for state in self._states.values())

    def price_text(self, symbol: str, ticks: int) -> str:
        return self._states[symbol].price_text(ticks)

    def qty_text(self, symbol: str, lots: int) -> str:
        return self._states[symbol].qty_text(lots)
